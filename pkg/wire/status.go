package wire

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Code is the gRPC code a sentinel error is answered with.
type Code struct {
	Err  error
	Code codes.Code
}

// Status answers err over gRPC: with the code of the first sentinel of
// table that err wraps (the order is the precedence); else err itself
// when it is a status; else the code of a status wrapped inside it (the
// answer of another server that caused it); else Internal. Each server
// gives its own table; the order of these rules is the same everywhere.
func Status(err error, table []Code) error {
	if err == nil {
		return nil
	}
	for _, c := range table {
		if errors.Is(err, c.Err) {
			return status.Error(c.Code, err.Error())
		}
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	code := codes.Internal
	if st, ok := status.FromError(err); ok {
		code = st.Code()
	}
	return status.Error(code, err.Error())
}

// OwnerTrailer is the trailer in which a process server of a cluster that
// does not serve a VM names the address of the one that does: agents and
// ferryctl go there.
const OwnerTrailer = "ferry-owner"
