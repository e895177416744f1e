package main

import (
	_ "github.com/llmd-kn/llmd-kn/pkg/kvstore/drivers" // s3://, gs://, azblob:// for --batch-storage
)
