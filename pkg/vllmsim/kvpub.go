package vllmsim

import (
	"context"
	"log/slog"
	"net"
	"sync"

	"github.com/go-zeromq/zmq4"

	"github.com/llmd-kn/llmd-kn/pkg/kvevents"
)

// kvPublisher publishes KV-event batches on a ZMQ PUB socket from its own
// goroutine. The engine loop hands it batches through a bounded queue and
// never waits: when the queue is full the batch is dropped, and because
// sequence numbers are assigned before the queue, a subscriber sees the gap.
type kvPublisher struct {
	sock  zmq4.Socket
	topic []byte
	ch    chan pubItem
	seq   uint64 // next sequence number; engine loop only
	log   *slog.Logger

	cancel  context.CancelFunc
	runDone chan struct{}
	dialing sync.WaitGroup
}

type pubItem struct {
	seq   uint64
	batch kvevents.Batch
}

func newKVPublisher(cfg KVEventsConfig, log *slog.Logger) (*kvPublisher, error) {
	ctx, cancel := context.WithCancel(context.Background())
	opts := []zmq4.Option{zmq4.WithLogger(slog.NewLogLogger(log.Handler(), slog.LevelDebug))}
	bind := cfg.bind()
	if !bind {
		// Connect as ZMQ does: in the background, retrying until the
		// subscriber is up, and again after it goes away.
		opts = append(opts, zmq4.WithDialerMaxRetries(-1), zmq4.WithAutomaticReconnect(true))
	}
	p := &kvPublisher{
		sock:    zmq4.NewPub(ctx, opts...),
		topic:   []byte(cfg.Topic),
		ch:      make(chan pubItem, cfg.MaxQueueSize),
		log:     log,
		cancel:  cancel,
		runDone: make(chan struct{}),
	}
	if err := p.sock.SetOption(zmq4.OptionHWM, cfg.HWM); err != nil {
		cancel()
		_ = p.sock.Close()
		return nil, err
	}
	if bind {
		if err := p.sock.Listen(cfg.Endpoint); err != nil {
			cancel()
			_ = p.sock.Close()
			return nil, err
		}
		log.Info("publishing KV events", "bind", p.sock.Addr().String(), "topic", cfg.Topic)
	} else {
		p.dialing.Add(1)
		go func() {
			defer p.dialing.Done()
			if err := p.sock.Dial(cfg.Endpoint); err != nil && ctx.Err() == nil {
				log.Warn("kv events: connect failed", "endpoint", cfg.Endpoint, "err", err)
			}
		}()
		log.Info("publishing KV events", "connect", cfg.Endpoint, "topic", cfg.Topic)
	}
	go p.run()
	return p, nil
}

// enqueue hands a batch to the publisher without blocking; it reports false
// when the batch was dropped.
func (p *kvPublisher) enqueue(b kvevents.Batch) bool {
	it := pubItem{seq: p.seq, batch: b}
	p.seq++
	select {
	case p.ch <- it:
		return true
	default:
		return false
	}
}

func (p *kvPublisher) run() {
	defer close(p.runDone)
	enc := kvevents.NewEncoder()
	for it := range p.ch {
		payload, err := enc.Encode(&it.batch)
		if err != nil {
			p.log.Error("kv events: encode", "err", err)
			continue
		}
		// The socket queues the message and sends it later: it must own
		// its frames.
		msg := zmq4.NewMsgFrom(p.topic, kvevents.AppendSeq(nil, it.seq), append([]byte(nil), payload...))
		if err := p.sock.SendMulti(msg); err != nil {
			p.log.Debug("kv events: send", "err", err)
		}
	}
}

func (p *kvPublisher) addr() net.Addr { return p.sock.Addr() }

// close publishes what is queued, then closes the socket. The engine loop
// must have stopped.
func (p *kvPublisher) close() {
	close(p.ch)
	<-p.runDone
	p.cancel()
	_ = p.sock.Close()
	p.dialing.Wait()
}
