// A natsflow UDF vertex in Go, written from docs/protocol.md with nats.go only.
// It runs the `shout` function (see ../shout.py for its definition, the same in every language).
//
// Build (Debian packages golang-go and golang-github-nats-io-go-nats-dev):
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o shout-vertex .
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

type tagCondition struct {
	Operator string   `json:"operator"`
	Values   []string `json:"values"`
}

type output struct {
	To        string        `json:"to"`
	Subject   string        `json:"subject"`
	Stream    string        `json:"stream"`
	SoftLimit uint64        `json:"softLimit"`
	OnFull    string        `json:"onFull"`
	Tags      *tagCondition `json:"tags"`
}

type descriptor struct {
	Protocol string `json:"protocol"`
	Pipeline string `json:"pipeline"`
	Vertex   string `json:"vertex"`
	Limits   struct {
		ReadBatchSize int `json:"readBatchSize"`
		ReadTimeoutMs int `json:"readTimeoutMs"`
		AckWaitMs     int `json:"ackWaitMs"`
	} `json:"limits"`
	Input struct {
		Stream            string `json:"stream"`
		Consumer          string `json:"consumer"`
		DeadLetterSubject string `json:"deadLetterSubject"`
	} `json:"input"`
	Outputs []output          `json:"outputs"`
	Headers map[string]string `json:"headers"`
}

type message struct {
	value []byte
	keys  []string
	tags  []string
}

// ---- the function -------------------------------------------------------------------------

func shout(keys []string, value []byte) []message {
	if len(value) == 0 {
		return nil
	}
	upper := make([]byte, len(value))
	for i, c := range value {
		if c >= 'a' && c <= 'z' {
			c -= 32
		}
		upper[i] = c
	}
	tag := "odd"
	if len(value)%2 == 0 {
		tag = "even"
	}
	out := []message{{upper, keys, []string{tag}}}
	if len(value) > 12 {
		out = append(out, message{[]byte(strconv.Itoa(len(value))), keys, []string{"long"}})
	}
	return out
}

// ---- protocol -----------------------------------------------------------------------------

const drop = "__drop__"

func (t *tagCondition) matches(tags []string) bool {
	if t == nil {
		return true
	}
	hits := 0
	for _, want := range t.Values {
		for _, have := range tags {
			if want == have {
				hits++
				break
			}
		}
	}
	switch t.Operator {
	case "and":
		return hits == len(t.Values)
	case "not":
		return hits == 0
	default:
		return hits > 0
	}
}

func decodeKeys(raw string) ([]string, error) {
	if raw == "" {
		return nil, nil
	}
	var keys []string
	if err := json.Unmarshal([]byte(raw), &keys); err != nil {
		return nil, fmt.Errorf("Nf-Keys must be a JSON array of strings, got %q: %v", raw, err)
	}
	return keys, nil
}

// gate is the back-pressure estimate of one out-buffer (§7).
type gate struct {
	out   output
	count uint64
	at    time.Time
}

func (g *gate) room(js nats.JetStreamContext, n int, stopping func() bool) (bool, error) {
	for {
		if g.count+uint64(n) > g.out.SoftLimit || time.Since(g.at) > time.Second {
			info, err := js.StreamInfo(g.out.Stream)
			if err != nil {
				return false, err
			}
			g.count, g.at = info.State.Msgs, time.Now()
		}
		if g.count+uint64(n) <= g.out.SoftLimit {
			return true, nil
		}
		if g.out.OnFull == "discardLatest" {
			return false, nil
		}
		if stopping() {
			return false, errors.New("stopping while the buffer is full")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type vertex struct {
	d        descriptor
	js       nats.JetStreamContext
	gates    []*gate
	stopping atomic.Bool
}

func (v *vertex) outHeaders(in *nats.Msg, meta *nats.MsgMetadata, msgID, id string, keys []string) nats.Header {
	h := nats.Header{}
	for k, vals := range in.Header {
		if strings.HasPrefix(k, "Nats-") || strings.HasPrefix(k, "Nf-") {
			continue
		}
		h[k] = vals
	}
	h.Set(v.d.Headers["msgId"], msgID)
	h.Set(v.d.Headers["id"], id)
	et := in.Header.Get(v.d.Headers["eventTime"])
	if et == "" { // when JetStream stored the input: the same on every redelivery (§3)
		et = strconv.FormatInt(meta.Timestamp.UnixMilli(), 10)
	}
	h.Set(v.d.Headers["eventTime"], et)
	if len(keys) > 0 {
		raw, _ := json.Marshal(keys)
		h.Set(v.d.Headers["keys"], string(raw))
	}
	return h
}

// origin names an input after its own Nats-Msg-Id (§5): stable when the message is stored again.
func (v *vertex) origin(m *nats.Msg, seq uint64) string {
	id := m.Header.Get(v.d.Headers["msgId"])
	if id == "" {
		id = fmt.Sprintf("seq:%d", seq)
	}
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])[:24]
}

func (v *vertex) process(msgs []*nats.Msg) error {
	perGate := make([][]*nats.Msg, len(v.gates))
	var futures []nats.PubAckFuture
	for _, m := range msgs {
		meta, err := m.Metadata()
		if err != nil {
			return err
		}
		from := v.origin(m, meta.Sequence.Stream)
		keys, err := decodeKeys(m.Header.Get(v.d.Headers["keys"]))
		if err != nil { // a bad message goes to the dead-letter subject (§6)
			h := nats.Header{}
			for k, vals := range m.Header {
				h[k] = vals
			}
			h.Del(v.d.Headers["msgId"])
			h.Set(v.d.Headers["error"], "bad envelope: "+err.Error())
			h.Set("Nf-Error-Vertex", v.d.Vertex)
			f, err := v.js.PublishMsgAsync(&nats.Msg{Subject: v.d.Input.DeadLetterSubject, Data: m.Data, Header: h},
				nats.MsgId(fmt.Sprintf("dlq:%s:%s", v.d.Vertex, from)))
			if err != nil {
				return err
			}
			futures = append(futures, f)
			continue
		}
		id := m.Header.Get(v.d.Headers["id"])
		if id == "" { // no data id: one a redelivery keeps (§3)
			id = m.Header.Get(v.d.Headers["msgId"])
		}
		if id == "" {
			id = fmt.Sprintf("seq:%d", meta.Sequence.Stream)
		}
		for i, o := range shout(keys, m.Data) {
			if contains(o.tags, drop) {
				continue
			}
			msgID := fmt.Sprintf("%s:%s:%d", v.d.Vertex, from, i)
			dataID := id
			if i > 0 {
				dataID = msgID
			}
			for g, gt := range v.gates {
				if gt.out.Tags.matches(o.tags) {
					perGate[g] = append(perGate[g], &nats.Msg{Subject: gt.out.Subject, Data: o.value,
						Header: v.outHeaders(m, meta, msgID, dataID, o.keys)})
				}
			}
		}
	}
	for g, list := range perGate {
		if len(list) == 0 {
			continue
		}
		ok, err := v.gates[g].room(v.js, len(list), v.stopping.Load)
		if err != nil {
			return err
		}
		if !ok {
			log.Printf("buffer %s full: discarded %d messages", v.gates[g].out.Stream, len(list))
			continue
		}
		v.gates[g].count += uint64(len(list))
		for _, out := range list {
			f, err := v.js.PublishMsgAsync(out, nats.MsgId(out.Header.Get(v.d.Headers["msgId"])))
			if err != nil {
				return err
			}
			futures = append(futures, f)
		}
	}
	for _, f := range futures { // every output stored (a duplicate counts as stored) ...
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-time.After(10 * time.Second):
			return errors.New("no publish ack within 10s")
		}
	}
	for _, m := range msgs { // ... before any input is acked (§4)
		if err := m.Ack(); err != nil {
			return err
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func main() {
	var d descriptor
	if err := json.Unmarshal([]byte(os.Getenv("NATSFLOW_DESCRIPTOR")), &d); err != nil {
		log.Fatalf("NATSFLOW_DESCRIPTOR: %v", err)
	}
	url := os.Getenv("NATS_URL") // the only place the server is named (protocol §2): no default
	if url == "" {
		log.Fatalf("NATS_URL is not set")
	}
	// The name `natsflow ui` counts replicas by (protocol §8).
	// Reconnect forever like the Python worker: nats.go's default gives up after 60 tries.
	opts := []nats.Option{nats.Name(fmt.Sprintf("natsflow-%s-%s", d.Pipeline, d.Vertex)), nats.MaxReconnects(-1)}
	if t := os.Getenv("NATS_TOKEN"); t != "" {
		opts = append(opts, nats.Token(t))
	}
	if u := os.Getenv("NATS_USER"); u != "" {
		opts = append(opts, nats.UserInfo(u, os.Getenv("NATS_PASSWORD")))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		log.Fatalf("connect: %v", err)
	}
	js, err := nc.JetStream(nats.PublishAsyncMaxPending(8192))
	if err != nil {
		log.Fatalf("jetstream: %v", err)
	}
	sub, err := js.PullSubscribe("", d.Input.Consumer, nats.Bind(d.Input.Stream, d.Input.Consumer))
	if err != nil {
		log.Fatalf("bind %s/%s: %v", d.Input.Stream, d.Input.Consumer, err)
	}
	v := &vertex{d: d, js: js}
	for _, o := range d.Outputs {
		v.gates = append(v.gates, &gate{out: o})
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-signals; v.stopping.Store(true) }()

	log.Printf("%s (go) started: reading %s", d.Vertex, d.Input.Stream)
	wait := time.Duration(d.Limits.ReadTimeoutMs) * time.Millisecond
	for !v.stopping.Load() {
		msgs, err := sub.Fetch(d.Limits.ReadBatchSize, nats.MaxWait(wait))
		if errors.Is(err, nats.ErrConnectionClosed) {
			log.Fatalf("fetch: %v", err) // every later fetch fails at once: exit 1, let the supervisor restart us
		}
		if err != nil && !errors.Is(err, nats.ErrTimeout) {
			log.Printf("fetch: %v", err)
			time.Sleep(time.Second) // not a busy loop while NATS is unwell
			continue
		}
		if len(msgs) == 0 {
			continue
		}
		// Long batches keep their inputs with +WPI every ackWait/3 (§4.5).
		done := make(chan struct{})
		go func() {
			t := time.NewTicker(time.Duration(d.Limits.AckWaitMs/3) * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					for _, m := range msgs {
						_ = m.InProgress()
					}
				}
			}
		}()
		if err := v.process(msgs); err != nil { // nothing acked: hand the batch back (§4.6)
			log.Printf("batch failed, handing %d messages back: %v", len(msgs), err)
			for _, m := range msgs {
				_ = m.Nak()
			}
		}
		close(done)
	}
	_ = nc.Flush()
	nc.Close()
}
