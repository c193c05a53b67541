package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ferrydr/ferry/pkg/blockdev"
)

// Export is one named device a Server offers.
type Export struct {
	Name     string
	Device   blockdev.Device
	ReadOnly bool
	// BlockSize is the minimum and preferred I/O size advertised (default
	// 512). Writes that are not aligned to the device's own alignment are
	// merged by the server with read-modify-write.
	BlockSize uint32
}

// Access says who may use a Server. A disk served over NBD is the whole
// machine's data, so nothing is open by default: a client comes through a
// Unix socket as an allowed user, or over TCP with TLS and a certificate
// Authorize accepts. Plain TCP needs Insecure.
type Access struct {
	// TLS, when set, is required of every TCP client: before anything else
	// it sends STARTTLS (NBD_OPT_STARTTLS) and completes the handshake;
	// other options are answered NBD_REP_ERR_TLS_REQD. Its ClientAuth
	// should require and verify client certificates.
	TLS *tls.Config
	// Authorize decides whether a TLS client's verified certificate may
	// use the exports (nil: any certificate the TLS config verified).
	Authorize func(tls.ConnectionState) error
	// UIDs are the users whose processes may connect through a Unix
	// socket, checked by the kernel's peer credentials; the server's own
	// user and root are always allowed.
	UIDs []int
	// Insecure serves TCP clients without TLS or authentication. Listing
	// exports is then refused, so that only a client that was told an
	// export's (unguessable) name can open it.
	Insecure bool
}

// ErrPlainTCP is returned for a TCP listener without TLS or Insecure.
var ErrPlainTCP = errors.New("nbd over plain TCP has no authentication: serve it with TLS, on a unix: socket, or pass the insecure flag")

// Server serves exports to NBD clients. Exports may be added and removed
// while it runs; a connection keeps the device it opened.
type Server struct {
	log    *slog.Logger
	access Access

	mu      sync.Mutex
	exports map[string]*exportState
	conns   map[net.Conn]struct{}
	ls      []net.Listener
	wg      sync.WaitGroup
	closed  bool
}

type exportState struct {
	Export
	// mu orders writes that need read-modify-write (held) with other
	// writes (shared), across connections too.
	mu sync.RWMutex
}

// NewServer returns a server with no exports that admits clients as a
// says (a nil log: the default logger).
func NewServer(log *slog.Logger, a Access) *Server {
	if log == nil {
		log = slog.Default()
	}
	return &Server{log: log.With("component", "nbd"), access: a, exports: map[string]*exportState{}, conns: map[net.Conn]struct{}{}}
}

// Add offers an export, replacing one of the same name.
func (s *Server) Add(e Export) {
	if e.BlockSize == 0 {
		e.BlockSize = 512
	}
	s.mu.Lock()
	s.exports[e.Name] = &exportState{Export: e}
	s.mu.Unlock()
}

// Remove stops offering an export to new connections.
func (s *Server) Remove(name string) {
	s.mu.Lock()
	delete(s.exports, name)
	s.mu.Unlock()
}

// export returns the export of that name. There is no default export: an
// export's name may be what keeps others out of it.
func (s *Server) export(name string) *exportState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exports[name]
}

func (s *Server) names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.exports {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Serve accepts connections on l until Close. A TCP listener without TLS
// or Insecure is closed at once with ErrPlainTCP.
func (s *Server) Serve(l net.Listener) error {
	if _, unix := l.(*net.UnixListener); !unix && s.access.TLS == nil && !s.access.Insecure {
		l.Close()
		s.log.Error("nbd not served", "listen", l.Addr().String(), "err", ErrPlainTCP)
		return ErrPlainTCP
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return net.ErrClosed
	}
	s.ls = append(s.ls, l)
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return net.ErrClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			if err := s.handle(c); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Warn("nbd connection ended", "remote", c.RemoteAddr(), "err", err)
			}
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Close stops every listener and connection and waits for them.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for _, l := range s.ls {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// Listen opens "unix:PATH" (a socket only its owner may open: mode 0600)
// or a TCP "host:port".
func Listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		l, err := net.Listen("unix", path)
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(path, 0o600); err != nil {
			l.Close()
			return nil, err
		}
		return l, nil
	}
	return net.Listen("tcp", addr)
}

// admitUnix checks a Unix-socket client's user against the allowed ones.
func (s *Server) admitUnix(c *net.UnixConn) error {
	uid, pid, err := unixPeer(c)
	if err != nil {
		return err
	}
	if uid == 0 || uid == os.Getuid() || slices.Contains(s.access.UIDs, uid) {
		return nil
	}
	return fmt.Errorf("process %d of uid %d may not use this socket", pid, uid)
}

// handle negotiates, then serves transmission until the client leaves.
func (s *Server) handle(c net.Conn) error {
	// authenticated: a Unix client of an allowed user, or a TLS client
	// whose certificate was accepted; only these may list exports.
	authenticated := false
	if uc, ok := c.(*net.UnixConn); ok {
		if err := s.admitUnix(uc); err != nil {
			return fmt.Errorf("refused: %w", err)
		}
		authenticated = true
	}
	needTLS := !authenticated && s.access.TLS != nil
	var hs [18]byte
	binary.BigEndian.PutUint64(hs[0:], magicInit)
	binary.BigEndian.PutUint64(hs[8:], magicOpt)
	binary.BigEndian.PutUint16(hs[16:], flagFixedNew|flagNoZeroes)
	if _, err := c.Write(hs[:]); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c, cf[:]); err != nil {
		return err
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&clientFixedNew == 0 {
		return fmt.Errorf("client does not speak fixed newstyle negotiation")
	}
	noZeroes := clientFlags&clientNoZeroes != 0
	for {
		var hdr [16]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint64(hdr[0:]) != magicOpt {
			return fmt.Errorf("bad option magic")
		}
		opt, n := binary.BigEndian.Uint32(hdr[8:]), binary.BigEndian.Uint32(hdr[12:])
		if n > 64<<10 {
			return fmt.Errorf("option %d of %d bytes is too long", opt, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c, data); err != nil {
			return err
		}
		if needTLS {
			switch opt {
			case optStartTLS:
			case optAbort:
				optReply(c, opt, repAck, nil)
				return io.EOF
			case optExportName:
				return errors.New("refused: the client asked for an export before STARTTLS")
			default:
				if err := optReply(c, opt, repErrTLSReqd, []byte("this server requires TLS")); err != nil {
					return err
				}
				continue
			}
		}
		switch opt {
		case optStartTLS:
			if !needTLS || len(data) != 0 {
				if err := optReply(c, opt, repErrInvalid, nil); err != nil {
					return err
				}
				continue
			}
			if err := optReply(c, opt, repAck, nil); err != nil {
				return err
			}
			tc := tls.Server(c, s.access.TLS)
			tc.SetDeadline(time.Now().Add(30 * time.Second))
			if err := tc.Handshake(); err != nil {
				return fmt.Errorf("refused: tls: %w", err)
			}
			tc.SetDeadline(time.Time{})
			st := tc.ConnectionState()
			if len(st.VerifiedChains) == 0 {
				return errors.New("refused: the client presented no certificate from this deployment's CA")
			}
			if s.access.Authorize != nil {
				if err := s.access.Authorize(st); err != nil {
					return fmt.Errorf("refused: %w", err)
				}
			}
			c, needTLS, authenticated = tc, false, true
		case optExportName:
			e := s.export(string(data))
			if e == nil {
				return fmt.Errorf("client asked for unknown export %q", data)
			}
			reply := binary.BigEndian.AppendUint64(nil, uint64(e.Device.Size()))
			reply = binary.BigEndian.AppendUint16(reply, transmissionFlags(e))
			if !noZeroes {
				reply = append(reply, make([]byte, 124)...)
			}
			if _, err := c.Write(reply); err != nil {
				return err
			}
			return s.transmit(c, e)
		case optAbort:
			optReply(c, opt, repAck, nil)
			return io.EOF
		case optList:
			if !authenticated {
				if err := optReply(c, opt, repErrPolicy, []byte("listing exports needs an authenticated client")); err != nil {
					return err
				}
				continue
			}
			for _, name := range s.names() {
				b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
				if err := optReply(c, opt, repServer, append(b, name...)); err != nil {
					return err
				}
			}
			if err := optReply(c, opt, repAck, nil); err != nil {
				return err
			}
		case optInfo, optGo:
			if len(data) < 6 {
				optReply(c, opt, repErrInvalid, nil)
				continue
			}
			nl := binary.BigEndian.Uint32(data)
			if uint64(len(data)) < 4+uint64(nl)+2 {
				optReply(c, opt, repErrInvalid, nil)
				continue
			}
			e := s.export(string(data[4 : 4+nl]))
			if e == nil {
				if err := optReply(c, opt, repErrUnknown, []byte("no such export")); err != nil {
					return err
				}
				continue
			}
			info := binary.BigEndian.AppendUint16(nil, infoExport)
			info = binary.BigEndian.AppendUint64(info, uint64(e.Device.Size()))
			info = binary.BigEndian.AppendUint16(info, transmissionFlags(e))
			if err := optReply(c, opt, repInfo, info); err != nil {
				return err
			}
			bsz := binary.BigEndian.AppendUint16(nil, infoBlockSize)
			bsz = binary.BigEndian.AppendUint32(bsz, 1)
			bsz = binary.BigEndian.AppendUint32(bsz, e.BlockSize)
			bsz = binary.BigEndian.AppendUint32(bsz, maxPayload)
			if err := optReply(c, opt, repInfo, bsz); err != nil {
				return err
			}
			if err := optReply(c, opt, repAck, nil); err != nil {
				return err
			}
			if opt == optGo {
				return s.transmit(c, e)
			}
		default:
			if err := optReply(c, opt, repErrUnsup, nil); err != nil {
				return err
			}
		}
	}
}

func transmissionFlags(e *exportState) uint16 {
	f := uint16(tfHasFlags | tfSendFlush | tfSendFUA | tfSendTrim | tfSendWriteZeroes)
	if e.ReadOnly {
		f |= tfReadOnly
	}
	return f
}

func optReply(w io.Writer, opt, typ uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 20+len(data)), magicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	_, err := w.Write(append(b, data...))
	return err
}

// Requests in flight on one connection are bounded in number and in
// payload bytes; the reader waits when either is reached.
const (
	maxInFlight      = 64
	maxInFlightBytes = 64 << 20
)

// request is one transmission-phase request on its way.
type request struct {
	typ, flags uint16
	handle     uint64
	off        uint64
	n          uint32
	data       []byte // a write's payload
	// lo and hi bound the 4 KiB blocks the request touches: writes that
	// are not block aligned read and rewrite whole blocks.
	lo, hi uint64
	// after are the earlier requests it must wait for; done closes when
	// it has been answered.
	after []*request
	done  chan struct{}
}

func (r *request) writes() bool {
	return r.typ == cmdWrite || r.typ == cmdWriteZeroes || r.typ == cmdTrim
}

// conflicts reports whether r, arriving after o, must wait for it: writes
// keep their order with every request on the blocks they touch, reads with
// the writes before them, and a flush with every write before it.
func (r *request) conflicts(o *request) bool {
	switch {
	case r.typ == cmdFlush:
		return o.writes()
	case o.typ == cmdFlush:
		return false
	case !r.writes() && !o.writes():
		return false
	}
	return r.lo < o.hi && o.lo < r.hi
}

// pipeline tracks the requests in flight on one connection.
type pipeline struct {
	mu       sync.Mutex
	cond     *sync.Cond
	inFlight []*request
	bytes    int
	wg       sync.WaitGroup
}

// admit waits for room, then records r with the earlier requests it
// conflicts with; it reports whether r is the only request in flight.
func (p *pipeline) admit(r *request) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.inFlight) > 0 && (len(p.inFlight) >= maxInFlight || p.bytes+len(r.data) > maxInFlightBytes) {
		p.cond.Wait()
	}
	for _, o := range p.inFlight {
		if r.conflicts(o) {
			r.after = append(r.after, o)
		}
	}
	p.inFlight = append(p.inFlight, r)
	p.bytes += len(r.data)
	p.wg.Add(1)
	return len(p.inFlight) == 1
}

// finish removes r from the requests in flight and wakes what waits on it.
func (p *pipeline) finish(r *request) {
	p.mu.Lock()
	for i, o := range p.inFlight {
		if o == r {
			p.inFlight = slices.Delete(p.inFlight, i, i+1)
			break
		}
	}
	p.bytes -= len(r.data)
	p.cond.Broadcast()
	p.mu.Unlock()
	close(r.done)
	p.wg.Done()
}

// transmit serves requests concurrently, answering each as it completes
// (out of order, matched by handle): a request waits only for the earlier
// ones it conflicts with, so writes to the same blocks reach the device
// in the client's order, and a flush covers every write sent before it. A
// request that arrives alone (nothing in flight, nothing more read) is
// served by the reader itself: one client waiting on each answer pays for
// no hand-off.
func (s *Server) transmit(c net.Conn, e *exportState) error {
	p := &pipeline{}
	p.cond = sync.NewCond(&p.mu)
	rw := &replyWriter{c: c, w: bufio.NewWriterSize(c, 256<<10)}
	replies := make(chan []byte, maxInFlight)
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		rw.writeReplies(replies)
	}()
	err := s.readRequests(bufio.NewReaderSize(c, 256<<10), e, p, rw, replies)
	// Requests already read are answered (or fail on the closed
	// connection) before the connection is let go.
	p.wg.Wait()
	close(replies)
	<-wrote
	return err
}

// replyWriter writes replies to a connection, buffered; after a failed
// write it closes the connection (the reader then ends) and drops the
// rest.
type replyWriter struct {
	mu     sync.Mutex
	c      net.Conn
	w      *bufio.Writer
	failed bool
}

// send writes one reply, and flushes when told to.
func (rw *replyWriter) send(reply []byte, flush bool) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if rw.failed {
		return
	}
	_, err := rw.w.Write(reply)
	if err == nil && flush {
		err = rw.w.Flush()
	}
	if err != nil {
		rw.failed = true
		rw.c.Close()
	}
}

// writeReplies sends the replies of requests served concurrently as they
// come, flushing whenever none is waiting.
func (rw *replyWriter) writeReplies(replies <-chan []byte) {
	for r := range replies {
		rw.send(r, len(replies) == 0)
	}
}

// readRequests reads requests until the client disconnects or breaks the
// protocol, and starts each.
func (s *Server) readRequests(br *bufio.Reader, e *exportState, p *pipeline, rw *replyWriter, replies chan<- []byte) error {
	var hdr [28]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint32(hdr[0:]) != magicRequest {
			return fmt.Errorf("bad request magic")
		}
		r := &request{flags: binary.BigEndian.Uint16(hdr[4:]), typ: binary.BigEndian.Uint16(hdr[6:]), handle: binary.BigEndian.Uint64(hdr[8:]),
			off: binary.BigEndian.Uint64(hdr[16:]), n: binary.BigEndian.Uint32(hdr[24:]), done: make(chan struct{})}
		if r.typ == cmdWrite {
			if r.n > maxPayload {
				return fmt.Errorf("write of %d bytes exceeds %d", r.n, maxPayload)
			}
			r.data = make([]byte, r.n)
			if _, err := io.ReadFull(br, r.data); err != nil {
				return err
			}
		}
		if r.typ == cmdDisc {
			return io.EOF
		}
		const bs = blockdev.BlockSize
		r.lo, r.hi = r.off/bs*bs, (r.off+uint64(r.n)+bs-1)/bs*bs
		if r.hi < r.lo { // wrapped: refused as out of range, conflicts with all
			r.lo, r.hi = 0, ^uint64(0)
		}
		// A flush or FUA write waits on the disk: never inline, so that
		// requests sent behind it are read and served meanwhile.
		alone := p.admit(r) && br.Buffered() == 0 && r.typ != cmdFlush && r.flags&cmdFlagFUA == 0
		run := func(alone bool) {
			defer p.finish(r)
			for _, o := range r.after {
				<-o.done
			}
			errno, data := s.serve(e, r)
			reply := make([]byte, 0, 16+len(data))
			reply = binary.BigEndian.AppendUint32(reply, magicReply)
			reply = binary.BigEndian.AppendUint32(reply, errno)
			reply = binary.BigEndian.AppendUint64(reply, r.handle)
			if errno == 0 {
				reply = append(reply, data...)
			}
			if alone {
				rw.send(reply, true)
			} else {
				replies <- reply
			}
		}
		if alone {
			run(true)
		} else {
			go run(false)
		}
	}
}

// serve carries out one request and returns its error number and, for a
// read, the data.
func (s *Server) serve(e *exportState, r *request) (uint32, []byte) {
	ctx := context.Background()
	size := uint64(e.Device.Size())
	inRange := r.off <= size && uint64(r.n) <= size-r.off
	switch r.typ {
	case cmdRead:
		if r.n > maxPayload {
			return errOverflow, nil
		}
		if !inRange {
			return errInval, nil
		}
		data := make([]byte, r.n)
		if _, err := e.Device.ReadAt(ctx, data, int64(r.off)); err != nil {
			s.log.Warn("nbd read", "export", e.Name, "off", r.off, "err", err)
			return errIO, nil
		}
		return 0, data
	case cmdWrite, cmdWriteZeroes, cmdTrim:
		if e.ReadOnly {
			return errPerm, nil
		}
		if !inRange {
			return errNoSpc, nil
		}
		p := r.data
		if r.typ != cmdWrite {
			if r.n > maxPayload {
				return errOverflow, nil
			}
			// Trim is written as zeros: what the protected disk reads
			// next is then defined, and replicated.
			p = make([]byte, r.n)
		}
		if err := e.write(ctx, p, int64(r.off)); err != nil {
			s.log.Warn("nbd write", "export", e.Name, "off", r.off, "err", err)
			if errors.Is(err, blockdev.ErrNoSpace) {
				return errNoSpc, nil
			}
			return errIO, nil
		}
		if r.flags&cmdFlagFUA != 0 {
			if err := e.Device.Sync(ctx); err != nil {
				return errIO, nil
			}
		}
		return 0, nil
	case cmdFlush:
		if err := e.Device.Sync(ctx); err != nil {
			return errIO, nil
		}
		return 0, nil
	}
	return errInval, nil
}

// write writes p at off, merging the ends with the device's content when
// they are not aligned to its 4 KiB blocks. p is the request's own buffer:
// a device that takes a handoff keeps it.
func (e *exportState) write(ctx context.Context, p []byte, off int64) error {
	const bs = blockdev.BlockSize
	if off%bs == 0 && len(p)%bs == 0 {
		e.mu.RLock()
		defer e.mu.RUnlock()
		return e.handoff(ctx, p, off)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	start := off / bs * bs
	end := min((off+int64(len(p))+bs-1)/bs*bs, e.Device.Size())
	merged := make([]byte, end-start)
	if _, err := e.Device.ReadAt(ctx, merged, start); err != nil {
		return err
	}
	copy(merged[off-start:], p)
	return e.handoff(ctx, merged, start)
}

// handoff writes p, a buffer nothing else uses, handing it to a device that
// can keep it.
func (e *exportState) handoff(ctx context.Context, p []byte, off int64) error {
	var err error
	if h, ok := e.Device.(blockdev.Handoff); ok {
		_, err = h.WriteAtHandoff(ctx, p, off)
	} else {
		_, err = e.Device.WriteAt(ctx, p, off)
	}
	return err
}
