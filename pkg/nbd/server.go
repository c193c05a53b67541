package nbd

import (
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
	// mu orders writes that need read-modify-write with other writes.
	mu sync.Mutex
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

// transmit serves requests in order; each is answered before the next is
// read, so the order of writes on the device is the client's.
func (s *Server) transmit(c net.Conn, e *exportState) error {
	ctx := context.Background()
	var hdr [28]byte
	buf := make([]byte, 0, 1<<20)
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint32(hdr[0:]) != magicRequest {
			return fmt.Errorf("bad request magic")
		}
		flags, typ := binary.BigEndian.Uint16(hdr[4:]), binary.BigEndian.Uint16(hdr[6:])
		handle := binary.BigEndian.Uint64(hdr[8:])
		off, n := binary.BigEndian.Uint64(hdr[16:]), binary.BigEndian.Uint32(hdr[24:])
		size := uint64(e.Device.Size())
		inRange := off <= size && uint64(n) <= size-off
		if typ == cmdWrite {
			if n > maxPayload {
				return fmt.Errorf("write of %d bytes exceeds %d", n, maxPayload)
			}
			if cap(buf) < int(n) {
				buf = make([]byte, n)
			}
			buf = buf[:n]
			if _, err := io.ReadFull(c, buf); err != nil {
				return err
			}
		}
		var errno uint32
		var data []byte
		switch typ {
		case cmdRead:
			if n > maxPayload {
				errno = errOverflow
				break
			}
			if !inRange {
				errno = errInval
				break
			}
			if cap(buf) < int(n) {
				buf = make([]byte, n)
			}
			data = buf[:n]
			if _, err := e.Device.ReadAt(ctx, data, int64(off)); err != nil {
				s.log.Warn("nbd read", "export", e.Name, "off", off, "err", err)
				errno, data = errIO, nil
			}
		case cmdWrite, cmdWriteZeroes, cmdTrim:
			if e.ReadOnly {
				errno = errPerm
				break
			}
			if !inRange {
				errno = errNoSpc
				break
			}
			p := buf[:n]
			if typ != cmdWrite {
				if n > maxPayload {
					errno = errOverflow
					break
				}
				// Trim is written as zeros: what the protected disk reads
				// next is then defined, and replicated.
				p = make([]byte, n)
			}
			if err := e.write(ctx, p, int64(off)); err != nil {
				s.log.Warn("nbd write", "export", e.Name, "off", off, "err", err)
				errno = errIO
				if errors.Is(err, blockdev.ErrNoSpace) {
					errno = errNoSpc
				}
				break
			}
			if flags&cmdFlagFUA != 0 {
				if err := e.Device.Sync(ctx); err != nil {
					errno = errIO
				}
			}
		case cmdFlush:
			if err := e.Device.Sync(ctx); err != nil {
				errno = errIO
			}
		case cmdDisc:
			return io.EOF
		default:
			errno = errInval
		}
		reply := binary.BigEndian.AppendUint32(make([]byte, 0, 16+len(data)), magicReply)
		reply = binary.BigEndian.AppendUint32(reply, errno)
		reply = binary.BigEndian.AppendUint64(reply, handle)
		if errno == 0 && data != nil {
			reply = append(reply, data...)
		}
		if _, err := c.Write(reply); err != nil {
			return err
		}
	}
}

// write writes p at off, merging the ends with the device's content when
// they are not aligned to its 4 KiB blocks.
func (e *exportState) write(ctx context.Context, p []byte, off int64) error {
	const bs = blockdev.BlockSize
	e.mu.Lock()
	defer e.mu.Unlock()
	if off%bs == 0 && len(p)%bs == 0 {
		_, err := e.Device.WriteAt(ctx, p, off)
		return err
	}
	start := off / bs * bs
	end := min((off+int64(len(p))+bs-1)/bs*bs, e.Device.Size())
	merged := make([]byte, end-start)
	if _, err := e.Device.ReadAt(ctx, merged, start); err != nil {
		return err
	}
	copy(merged[off-start:], p)
	_, err := e.Device.WriteAt(ctx, merged, start)
	return err
}
