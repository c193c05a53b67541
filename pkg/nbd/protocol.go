// Package nbd serves Ferry's devices over the Network Block Device
// protocol (fixed newstyle negotiation), so that real machines, QEMU and
// tools such as qemu-img, nbdcopy and the kernel's nbd client read and
// write them: the agent's write splitter as a protected disk, a recovery
// point read-only, a test failover's copy-on-write disk.
package nbd

// Protocol constants, from the NBD protocol specification.
const (
	magicInit      = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt       = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply  = 0x3e889045565a9
	magicRequest   = 0x25609513
	magicReply     = 0x67446698
	flagFixedNew   = 1 << 0
	flagNoZeroes   = 1 << 1
	clientFixedNew = 1 << 0
	clientNoZeroes = 1 << 1

	optExportName = 1
	optAbort      = 2
	optList       = 3
	optStartTLS   = 5
	optInfo       = 6
	optGo         = 7

	repAck        = 1
	repServer     = 2
	repInfo       = 3
	repErrUnsup   = 1<<31 + 1
	repErrPolicy  = 1<<31 + 2
	repErrInvalid = 1<<31 + 3
	repErrTLSReqd = 1<<31 + 5
	repErrUnknown = 1<<31 + 6

	infoExport    = 0
	infoBlockSize = 3

	tfHasFlags        = 1 << 0
	tfReadOnly        = 1 << 1
	tfSendFlush       = 1 << 2
	tfSendFUA         = 1 << 3
	tfSendTrim        = 1 << 5
	tfSendWriteZeroes = 1 << 6

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6

	cmdFlagFUA = 1 << 0

	errPerm     = 1
	errIO       = 5
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errShutdown = 108
)

// maxPayload bounds one request's data; larger requests are refused.
const maxPayload = 32 << 20
