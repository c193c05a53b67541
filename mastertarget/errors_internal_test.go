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
		if got := status.Code(toStatus(fmt.Errorf("vm web: %w", tc.err))); got != tc.want {
			t.Errorf("%v: %v, want %v", tc.err, got, tc.want)
		}
	}
}
