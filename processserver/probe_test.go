package processserver

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// serveOnce answers every connection on a loopback port with fn.
func serveOnce(t *testing.T, fn func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); fn(c) }()
		}
	}()
	return l.Addr().String()
}

func TestProbeSSH(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr := serveOnce(t, func(c net.Conn) { io.WriteString(c, "SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n") })
	banner, err := ProbeSSH(ctx, addr)
	if err != nil || banner != "SSH-2.0-OpenSSH_9.2p1 Debian-2" {
		t.Fatalf("banner %q, err %v", banner, err)
	}
	// RFC 4253 lets a server send other lines first.
	addr = serveOnce(t, func(c net.Conn) { io.WriteString(c, "welcome\r\nSSH-2.0-x\r\n") })
	if banner, err := ProbeSSH(ctx, addr); err != nil || banner != "SSH-2.0-x" {
		t.Fatalf("banner after a line: %q, %v", banner, err)
	}
	addr = serveOnce(t, func(c net.Conn) { io.WriteString(c, "HTTP/1.1 400 Bad Request\r\n") })
	if _, err := ProbeSSH(ctx, addr); err == nil {
		t.Fatal("an HTTP server passed for SSH")
	}
	// A port nothing listens on.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := l.Addr().String()
	l.Close()
	if _, err := ProbeSSH(ctx, closed); err == nil {
		t.Fatal("a closed port passed for SSH")
	}
	// A server that says nothing: the deadline ends the probe.
	addr = serveOnce(t, func(c net.Conn) { time.Sleep(2 * time.Second) })
	sctx, scancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer scancel()
	if _, err := ProbeSSH(sctx, addr); err == nil {
		t.Fatal("a silent server passed for SSH")
	}
}

func TestProbeRDP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got := make(chan []byte, 1)
	addr := serveOnce(t, func(c net.Conn) {
		req := make([]byte, len(x224Request))
		io.ReadFull(c, req)
		got <- req
		// TPKT, X.224 Connection Confirm (0xD0), RDP_NEG_RSP choosing TLS.
		c.Write([]byte{0x03, 0x00, 0x00, 0x13, 0x0e, 0xd0, 0x00, 0x00, 0x12, 0x34, 0x00, 0x02, 0x00, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00})
	})
	if _, err := ProbeRDP(ctx, addr); err != nil {
		t.Fatal(err)
	}
	if req := <-got; string(req) != string(x224Request) {
		t.Fatalf("server read % x", req)
	}
	addr = serveOnce(t, func(c net.Conn) { io.WriteString(c, "SSH-2.0-x\r\n") })
	if _, err := ProbeRDP(ctx, addr); err == nil || !strings.Contains(err.Error(), "X.224") {
		t.Fatalf("an SSH server passed for RDP: %v", err)
	}
}
