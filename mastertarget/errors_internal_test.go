package mastertarget

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/pkg/journal"
)

// TestEachSentinelHasOneCode: the master target's API answers each
// sentinel, wrapped as the server wraps them, with one gRPC code.
func TestEachSentinelHasOneCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{ErrInvalidRequest, codes.InvalidArgument},
		{ErrUnknownVM, codes.NotFound},
		{journal.ErrNoVM, codes.NotFound},
		{journal.ErrNoPoint, codes.NotFound},
		{ErrState, codes.FailedPrecondition},
		{journal.ErrInconsistent, codes.FailedPrecondition},
		{ErrNotCut, codes.Aborted},
		{journal.ErrChecksum, codes.DataLoss},
		{context.Canceled, codes.Canceled},
		{errors.New("anything else"), codes.Internal},
	} {
		// Also when the cause was another server's answer.
		cause := status.Error(codes.Unavailable, "the master target did not answer")
		if got := status.Code(toStatus(fmt.Errorf("vm web: %w: %w", tc.err, cause))); got != tc.want && tc.want != codes.Internal {
			t.Errorf("%v over a wrapped status: %v, want %v", tc.err, got, tc.want)
		}
		if got := status.Code(toStatus(fmt.Errorf("vm web: %w", tc.err))); got != tc.want {
			t.Errorf("%v: %v, want %v", tc.err, got, tc.want)
		}
	}
}
