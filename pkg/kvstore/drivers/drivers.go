// Package drivers links the cloud object-storage drivers (s3://, gs://,
// azblob://) into a binary that opens kvstore URLs; tests and the library
// itself need only file:// and mem://. Credentials come from each driver's
// usual environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS,
// AZURE_STORAGE_*), never from llmd-kn's own configuration.
package drivers

import (
	_ "gocloud.dev/blob/azureblob" // azblob://
	_ "gocloud.dev/blob/gcsblob"   // gs://
	_ "gocloud.dev/blob/s3blob"    // s3://
)
