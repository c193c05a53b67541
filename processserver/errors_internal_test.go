package processserver

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/pkg/journal"
)

// TestEachSentinelHasOneCode: the operator API answers every sentinel,
// wrapped as callers wrap them, with one gRPC code, so that a client can
// tell "no such thing" from "not now" from "wrong request".
func TestEachSentinelHasOneCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{journal.ErrNoVM, codes.NotFound},
		{journal.ErrNoPoint, codes.NotFound},
		{journal.ErrNoDisk, codes.NotFound},
		{ErrNoJob, codes.NotFound},
		{ErrNoExport, codes.NotFound},
		{ErrNotFound, codes.NotFound},
		{journal.ErrInconsistent, codes.FailedPrecondition},
		{ErrState, codes.FailedPrecondition},
		{ErrNoMasterTarget, codes.FailedPrecondition},
		{ErrNoNBD, codes.FailedPrecondition},
		{ErrInvalidRequest, codes.InvalidArgument},
		{journal.ErrChecksum, codes.DataLoss},
		{context.Canceled, codes.Canceled},
		{ErrFailover, codes.Internal},
		{errors.New("anything else"), codes.Internal},
	} {
		// Also when the cause was another server's answer.
		cause := status.Error(codes.Unavailable, "the master target did not answer")
		if got := status.Code(toStatus(fmt.Errorf("vm web: %w: %w", tc.err, cause))); got != tc.want && tc.want != codes.Internal {
			t.Errorf("%v over a wrapped status: %v, want %v", tc.err, got, tc.want)
		}
		wrapped := fmt.Errorf("vm web: %w", tc.err)
		if got := status.Code(toStatus(wrapped)); got != tc.want {
			t.Errorf("%v: %v, want %v", tc.err, got, tc.want)
		}
	}
	// Another server's answer without a sentinel keeps its code.
	if got := status.Code(toStatus(fmt.Errorf("group erp at the master target: %w", status.Error(codes.FailedPrecondition, "vm db is failing back")))); got != codes.FailedPrecondition {
		t.Errorf("a wrapped status became %v", got)
	}
	// An error that is a status already passes unchanged.
	if got := status.Code(toStatus(status.Error(codes.Unavailable, "x"))); got != codes.Unavailable {
		t.Errorf("a status error became %v", got)
	}
}
