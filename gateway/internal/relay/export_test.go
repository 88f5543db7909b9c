package relay

import (
	"errors"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// FailNthPublish makes the relay's nth telemetry publish (from 1) fail at
// once without sending it, as paho fails a publish it could not hand to its
// writer within WriteTimeout, on a connection that stays up. Call it before
// Run.
func (r *Relay) FailNthPublish(n int) {
	var count atomic.Int64
	next := r.publish
	r.publish = func(c mqtt.Client, topic string, payload []byte) mqtt.Token {
		if count.Add(1) == int64(n) {
			return failedToken{}
		}
		return next(c, topic, payload)
	}
}

type failedToken struct{}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (failedToken) Wait() bool                     { return true }
func (failedToken) WaitTimeout(time.Duration) bool { return true }
func (failedToken) Done() <-chan struct{}          { return closedChan }
func (failedToken) Error() error                   { return errors.New("publish was broken by timeout") }

// EventsBuffered reports how many security events wait in the buffer.
func (r *Relay) EventsBuffered() int { return len(r.events) }
