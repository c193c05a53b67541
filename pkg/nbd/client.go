package nbd

import (
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
)

// Client is a minimal NBD client (fixed newstyle, one request at a time):
// what Ferry's tests and tools use to write a served disk the way a
// machine would, without an external program per request.
type Client struct {
	c      net.Conn
	handle uint64
}

// Dial connects to addr (host:port or unix:PATH) and opens export.
func Dial(addr, export string) (*Client, error) { return DialTLS(addr, export, nil) }

// DialTLS is Dial with STARTTLS when cfg is set.
func DialTLS(addr, export string, cfg *tls.Config) (*Client, error) {
	network := "tcp"
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, addr = "unix", path
	}
	c, err := net.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	cl := &Client{c: c}
	if err := cl.handshake(export, cfg); err != nil {
		c.Close()
		return nil, fmt.Errorf("nbd %s export %q: %w", addr, export, err)
	}
	return cl, nil
}

func (cl *Client) handshake(export string, cfg *tls.Config) error {
	var hs [18]byte
	if _, err := io.ReadFull(cl.c, hs[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint64(hs[0:]) != magicInit || binary.BigEndian.Uint64(hs[8:]) != magicOpt {
		return fmt.Errorf("not an NBD newstyle server")
	}
	if binary.BigEndian.Uint16(hs[16:])&flagNoZeroes == 0 {
		return fmt.Errorf("server does not support no-zeroes")
	}
	req := binary.BigEndian.AppendUint32(nil, clientFixedNew|clientNoZeroes)
	if cfg != nil {
		req = binary.BigEndian.AppendUint64(req, magicOpt)
		req = binary.BigEndian.AppendUint32(req, optStartTLS)
		req = binary.BigEndian.AppendUint32(req, 0)
		if _, err := cl.c.Write(req); err != nil {
			return err
		}
		var rep [20]byte
		if _, err := io.ReadFull(cl.c, rep[:]); err != nil {
			return err
		}
		if typ := binary.BigEndian.Uint32(rep[12:]); typ != repAck {
			return fmt.Errorf("server refused STARTTLS (reply %#x)", typ)
		}
		if n := binary.BigEndian.Uint32(rep[16:]); n != 0 {
			return fmt.Errorf("STARTTLS reply carries %d bytes", n)
		}
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			if host, _, err := net.SplitHostPort(cl.c.RemoteAddr().String()); err == nil {
				cfg.ServerName = host
			}
		}
		tc := tls.Client(cl.c, cfg)
		if err := tc.Handshake(); err != nil {
			return err
		}
		cl.c, req = tc, nil
	}
	req = binary.BigEndian.AppendUint64(req, magicOpt)
	req = binary.BigEndian.AppendUint32(req, optExportName)
	req = binary.BigEndian.AppendUint32(req, uint32(len(export)))
	req = append(req, export...)
	if _, err := cl.c.Write(req); err != nil {
		return err
	}
	var reply [10]byte // the export's size and flags
	if _, err := io.ReadFull(cl.c, reply[:]); err != nil {
		return fmt.Errorf("export refused: %w", err)
	}
	return nil
}

func (cl *Client) request(typ uint16, flags uint16, off int64, length int, data []byte) error {
	cl.handle++
	hdr := binary.BigEndian.AppendUint32(make([]byte, 0, 28+len(data)), magicRequest)
	hdr = binary.BigEndian.AppendUint16(hdr, flags)
	hdr = binary.BigEndian.AppendUint16(hdr, typ)
	hdr = binary.BigEndian.AppendUint64(hdr, cl.handle)
	hdr = binary.BigEndian.AppendUint64(hdr, uint64(off))
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(length))
	if _, err := cl.c.Write(append(hdr, data...)); err != nil {
		return err
	}
	var rep [16]byte
	if _, err := io.ReadFull(cl.c, rep[:]); err != nil {
		return err
	}
	switch {
	case binary.BigEndian.Uint32(rep[0:]) != magicReply:
		return fmt.Errorf("bad reply magic")
	case binary.BigEndian.Uint64(rep[8:]) != cl.handle:
		return fmt.Errorf("reply to request %d, sent %d", binary.BigEndian.Uint64(rep[8:]), cl.handle)
	case binary.BigEndian.Uint32(rep[4:]) != 0:
		// NBD's error values are Linux's errno values.
		return fmt.Errorf("request failed: %w", syscall.Errno(binary.BigEndian.Uint32(rep[4:])))
	}
	return nil
}

// WriteAt writes p at off and returns once the server acknowledged it;
// fua asks for it to be durable first.
func (cl *Client) WriteAt(p []byte, off int64, fua bool) error {
	var flags uint16
	if fua {
		flags = cmdFlagFUA
	}
	return cl.request(cmdWrite, flags, off, len(p), p)
}

// ReadAt reads len(p) bytes at off.
func (cl *Client) ReadAt(p []byte, off int64) error {
	if err := cl.request(cmdRead, 0, off, len(p), nil); err != nil {
		return err
	}
	_, err := io.ReadFull(cl.c, p)
	return err
}

// Close disconnects.
func (cl *Client) Close() error {
	cl.handle++
	hdr := binary.BigEndian.AppendUint32(nil, magicRequest)
	hdr = binary.BigEndian.AppendUint16(hdr, 0)
	hdr = binary.BigEndian.AppendUint16(hdr, cmdDisc)
	hdr = binary.BigEndian.AppendUint64(hdr, cl.handle)
	hdr = append(hdr, make([]byte, 12)...)
	cl.c.Write(hdr)
	return cl.c.Close()
}
