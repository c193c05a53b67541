package client

import (
	"context"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/ferrydr/ferry/pkg/wire"
)

// Owners follows a cluster's process servers: a call about a VM that the
// process server asked does not own is answered with the owner's address
// (wire.OwnerTrailer), and Owners sends the call there, once, over a
// connection made with the same dial options. Any process server of the
// cluster can then be asked about any VM.
type Owners struct {
	opts  []grpc.DialOption
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// NewOwners returns an Owners that dials owners with opts (those the first
// connection was made with, without the interceptor).
func NewOwners(opts ...grpc.DialOption) *Owners {
	return &Owners{opts: opts, conns: map[string]*grpc.ClientConn{}}
}

// Unary is the interceptor to dial with (grpc.WithChainUnaryInterceptor).
func (o *Owners) Unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var md metadata.MD
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Trailer(&md))...)
	owner := md.Get(wire.OwnerTrailer)
	if err == nil || len(owner) == 0 || owner[0] == "" || owner[0] == cc.Target() {
		return err
	}
	c, derr := o.conn(owner[0])
	if derr != nil {
		return err
	}
	return c.Invoke(ctx, method, req, reply, opts...)
}

// Stream is the interceptor for streams (grpc.WithChainStreamInterceptor):
// a server-streaming call (a point's export) refused by a process server
// that names another as the owner is made again there with the same
// request.
func (o *Owners) Stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil || desc.ClientStreams || !desc.ServerStreams {
		return cs, err
	}
	return &followStream{ClientStream: cs, o: o, ctx: ctx, desc: desc, cc: cc, method: method, opts: opts}, nil
}

// followStream keeps the request of a server-streaming call so that it can
// be sent again to the owner when the first answer names one.
type followStream struct {
	grpc.ClientStream
	o        *Owners
	ctx      context.Context
	desc     *grpc.StreamDesc
	cc       *grpc.ClientConn
	method   string
	opts     []grpc.CallOption
	req      any
	received bool
}

func (f *followStream) SendMsg(m any) error {
	f.req = m
	return f.ClientStream.SendMsg(m)
}

func (f *followStream) RecvMsg(m any) error {
	err := f.ClientStream.RecvMsg(m)
	if err == nil || f.received || f.req == nil {
		f.received = f.received || err == nil
		return err
	}
	owner := f.ClientStream.Trailer().Get(wire.OwnerTrailer)
	if len(owner) == 0 || owner[0] == "" || owner[0] == f.cc.Target() {
		return err
	}
	c, derr := f.o.conn(owner[0])
	if derr != nil {
		return err
	}
	cs, serr := c.NewStream(f.ctx, f.desc, f.method, f.opts...)
	if serr != nil {
		return serr
	}
	if serr := cs.SendMsg(f.req); serr != nil {
		return serr
	}
	if serr := cs.CloseSend(); serr != nil {
		return serr
	}
	f.ClientStream, f.received = cs, true
	return cs.RecvMsg(m)
}

func (o *Owners) conn(addr string) (*grpc.ClientConn, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if c := o.conns[addr]; c != nil {
		return c, nil
	}
	c, err := grpc.NewClient(addr, o.opts...)
	if err != nil {
		return nil, err
	}
	o.conns[addr] = c
	return c, nil
}

// Close closes the connections to owners.
func (o *Owners) Close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for addr, c := range o.conns {
		c.Close()
		delete(o.conns, addr)
	}
}
