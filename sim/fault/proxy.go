// Package fault is Ferry's fault harness: what tests use to attack the
// real components. Proxy sits between an agent and a receiver and delays,
// throttles, cuts, resets and corrupts the traffic.
package fault

import (
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards TCP connections to a target and injects faults into them.
// Its settings may change while connections run.
type Proxy struct {
	l      net.Listener
	target string

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	rng   *rand.Rand

	delay    atomic.Int64 // per chunk, nanoseconds
	rate     atomic.Int64 // bytes per second, each direction; 0: unlimited
	cutAfter atomic.Int64 // reset each new connection after this many bytes; 0: never
	// Bit flips: one bit in every flipEvery bytes (on average), in the
	// directions set, until flipsLeft is spent.
	flipEvery atomic.Int64
	flipsLeft atomic.Int64
	flipUp    atomic.Bool // client to target
	flipDown  atomic.Bool // target to client
	flips     atomic.Int64
	// Connections numbered up to stallBelow (from 1, as accepted) go
	// silent: what they carry is read and dropped.
	stallBelow atomic.Int64
	accepted   atomic.Int64
	bytesUp    atomic.Int64
	bytesDown  atomic.Int64
	closedOnce sync.Once
}

// Listen starts a proxy on a free loopback port that forwards to target.
func Listen(target string, seed uint64) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{l: l, target: target, conns: map[net.Conn]struct{}{}, rng: rand.New(rand.NewPCG(seed, 0xf1a9))}
	go p.serve()
	return p, nil
}

// Addr is where clients connect.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// SetDelay delays every chunk forwarded, in both directions.
func (p *Proxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// SetRate throttles each direction of each connection to bytes/s (0: off).
func (p *Proxy) SetRate(bytesPerSec int64) { p.rate.Store(bytesPerSec) }

// CutAfter resets each connection opened from now on once it has carried
// n bytes (0: never).
func (p *Proxy) CutAfter(n int64) { p.cutAfter.Store(n) }

// FlipBits flips one random bit in about every `every` bytes forwarded in
// the chosen directions, count flips in all.
func (p *Proxy) FlipBits(every, count int64, up, down bool) {
	p.flipEvery.Store(every)
	p.flipUp.Store(up)
	p.flipDown.Store(down)
	p.flipsLeft.Store(count)
}

// Stall makes the connections open now go silent in both directions:
// the proxy keeps reading them and forwards nothing, so neither end sees
// an error (a link that loses everything, or a connection whose flow
// control is wedged). Connections opened later are forwarded.
func (p *Proxy) Stall() { p.stallBelow.Store(p.accepted.Load()) }

// Flips is how many bits were flipped so far.
func (p *Proxy) Flips() int64 { return p.flips.Load() }

// Accepted is how many connections the proxy took.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Bytes is what was forwarded each way.
func (p *Proxy) Bytes() (up, down int64) { return p.bytesUp.Load(), p.bytesDown.Load() }

// Reset closes every open connection at once, as a network reset does.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // RST, not FIN
		}
		c.Close()
	}
}

// Close stops the proxy and its connections.
func (p *Proxy) Close() error {
	var err error
	p.closedOnce.Do(func() {
		err = p.l.Close()
		p.Reset()
	})
	return err
}

func (p *Proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		go p.handle(c, p.accepted.Add(1))
	}
}

func (p *Proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

// handle forwards the conn-th connection accepted (from 1).
func (p *Proxy) handle(client net.Conn, conn int64) {
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	p.track(client, true)
	p.track(server, true)
	var carried atomic.Int64
	cut := p.cutAfter.Load()
	// Each pump says whether its source ended cleanly (EOF): then the
	// other direction may still run (a half-close); otherwise both go.
	done := make(chan bool, 2)
	pump := func(dst, src net.Conn, up bool) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if conn <= p.stallBelow.Load() {
				n = 0 // read and dropped
			}
			if n > 0 {
				chunk := buf[:n]
				p.corrupt(chunk, up)
				if d := p.delay.Load(); d > 0 {
					time.Sleep(time.Duration(d))
				}
				if r := p.rate.Load(); r > 0 {
					time.Sleep(time.Duration(float64(n) / float64(r) * float64(time.Second)))
				}
				if up {
					p.bytesUp.Add(int64(n))
				} else {
					p.bytesDown.Add(int64(n))
				}
				if total := carried.Add(int64(n)); cut > 0 && total > cut {
					client.(*net.TCPConn).SetLinger(0)
					done <- false
					return
				}
				if _, werr := dst.Write(chunk); werr != nil {
					done <- false
					return
				}
			}
			if err != nil {
				if tc, ok := dst.(*net.TCPConn); ok && errors.Is(err, io.EOF) {
					tc.CloseWrite()
					done <- true
					return
				}
				done <- false
				return
			}
		}
	}
	go pump(server, client, true)
	go pump(client, server, false)
	if clean := <-done; !clean {
		client.Close()
		server.Close()
	}
	<-done
	client.Close()
	server.Close()
	p.track(client, false)
	p.track(server, false)
}

// corrupt flips bits in chunk as the settings say.
func (p *Proxy) corrupt(chunk []byte, up bool) {
	every := p.flipEvery.Load()
	if every <= 0 || p.flipsLeft.Load() <= 0 || (up && !p.flipUp.Load()) || (!up && !p.flipDown.Load()) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// The number of flips in this chunk: each byte flips with 1/every.
	for i := int64(0); i < int64(len(chunk)); {
		gap := int64(p.rng.ExpFloat64() * float64(every))
		i += gap
		if i >= int64(len(chunk)) {
			break
		}
		if p.flipsLeft.Add(-1) < 0 {
			return
		}
		chunk[i] ^= 1 << p.rng.IntN(8)
		p.flips.Add(1)
		i++
	}
}
