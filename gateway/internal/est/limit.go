package est

import (
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxClients bounds the clients whose rate the limiter remembers.
const maxClients = 10000

// limiter is a token bucket per client, in a bounded map: when full, clients whose bucket has refilled (who
// lose nothing by being forgotten) are evicted, and if none has, an arbitrary one.
type limiter struct {
	rate  rate.Limit
	burst int
	max   int

	mu      sync.Mutex
	clients map[string]*rate.Limiter
}

func newLimiter(perSecond float64, burst, max int) *limiter {
	if burst < 1 {
		burst = 1
	}
	return &limiter{rate: rate.Limit(perSecond), burst: burst, max: max, clients: make(map[string]*rate.Limiter)}
}

// allow takes a token of client key at now; when there is none it returns how long until there is one.
func (l *limiter) allow(key string, now time.Time) (time.Duration, bool) {
	if l.rate <= 0 {
		return 0, true // no limit configured
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.clients[key]
	if lim == nil {
		if len(l.clients) >= l.max {
			l.evict(now)
		}
		lim = rate.NewLimiter(l.rate, l.burst)
		l.clients[key] = lim
	}
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	return 0, true
}

// evict forgets the clients whose bucket is full again, or one arbitrary client if none is.
func (l *limiter) evict(now time.Time) {
	for k, lim := range l.clients {
		if lim.TokensAt(now) >= float64(l.burst) {
			delete(l.clients, k)
		}
	}
	for k := range l.clients {
		if len(l.clients) < l.max {
			return
		}
		delete(l.clients, k)
	}
}

// clientKey identifies the client of r for its rate: a certificate the gateway would accept on some route (a
// factory identity of a known manufacturer, or a device certificate, valid or expired) by its issuer and
// serial, anything else by its IP address, so that a client presenting a fresh self-made certificate at each
// request does not get a fresh budget with it.
func (s *Server) clientKey(r *http.Request) string {
	if leaf, inter := peer(r.TLS); leaf != nil && s.trust.known(leaf, inter) {
		return "cert:" + leaf.Issuer.CommonName + "/" + leaf.SerialNumber.Text(16)
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return "ip:" + host
}
