package journal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// sealer encrypts write payloads at rest with AES-256-GCM. Each payload
// gets a random 96-bit nonce stored in front of it, and its VM, sequence,
// disk, offset and length are the authenticated data: a payload moved to
// another record, VM or place fails to open instead of being read there.
type sealer struct {
	aead cipher.AEAD
}

const nonceSize = 12

func newSealer(key []byte) (*sealer, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("journal: encryption key of %d bytes; AES-256 needs 32", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

func aad(r *Record) []byte {
	b := make([]byte, 0, len(r.VM)+32)
	b = append(b, r.VM...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Seq))
	b = binary.BigEndian.AppendUint32(b, uint32(r.Disk))
	b = binary.BigEndian.AppendUint64(b, uint64(r.Offset))
	return binary.BigEndian.AppendUint32(b, uint32(r.Length))
}

func (s *sealer) seal(r *Record, payload []byte) ([]byte, error) {
	out := make([]byte, nonceSize, nonceSize+len(payload)+s.aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, err
	}
	return s.aead.Seal(out, out[:nonceSize], payload, aad(r)), nil
}

// open returns the stored payload of r decrypted when r was encrypted.
func (s *sealer) open(r *Record, stored []byte) ([]byte, error) {
	if !r.Encrypted {
		return stored, nil
	}
	if s == nil {
		return nil, fmt.Errorf("%w: the payload is encrypted and the journal was opened without its key", ErrInvalid)
	}
	if len(stored) < nonceSize+s.aead.Overhead() {
		return nil, fmt.Errorf("%w: encrypted payload of %d bytes", ErrChecksum, len(stored))
	}
	out, err := s.aead.Open(nil, stored[:nonceSize], stored[nonceSize:], aad(r))
	if err != nil {
		return nil, fmt.Errorf("%w: encrypted payload does not authenticate (wrong key, or damaged)", ErrChecksum)
	}
	return out, nil
}

// keyCheckText is sealed under the journal's key when it is first opened
// with one; opening it again proves the key is the same.
var (
	keyCheckName = []byte("check")
	keyCheckText = []byte("ferry journal key check v1")
	keyCheckAD   = []byte("ferry-journal-key-check")
)

// checkKey binds the journal to its key: the first open with a key records
// a check sealed under it; afterwards a journal with a check opens only
// with the key that opens the check, and never without one (new data would
// be stored in plain text beside the encrypted).
func checkKey(tx *bolt.Tx, s *sealer) error {
	check := tx.Bucket(bucketKeys).Get(keyCheckName)
	switch {
	case s == nil && check == nil:
		return nil
	case s == nil:
		return fmt.Errorf("%w: the journal is encrypted: open it with its key (--encryption-key-file)", ErrKey)
	case check == nil:
		out := make([]byte, nonceSize, nonceSize+len(keyCheckText)+s.aead.Overhead())
		if _, err := rand.Read(out); err != nil {
			return err
		}
		return tx.Bucket(bucketKeys).Put(keyCheckName, s.aead.Seal(out, out[:nonceSize], keyCheckText, keyCheckAD))
	}
	if len(check) < nonceSize {
		return fmt.Errorf("%w: the stored key check is damaged", ErrKey)
	}
	text, err := s.aead.Open(nil, check[:nonceSize], check[nonceSize:], keyCheckAD)
	if err != nil || !bytes.Equal(text, keyCheckText) {
		return fmt.Errorf("%w: the journal is encrypted with another key", ErrKey)
	}
	return nil
}

// ReadKeyFile reads a 32-byte key file: the raw bytes, or 64 hex digits.
func ReadKeyFile(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(raw) == 32 {
		return raw, nil
	}
	if k, err := hex.DecodeString(strings.TrimSpace(string(raw))); err == nil && len(k) == 32 {
		return k, nil
	}
	return nil, fmt.Errorf("key file %s: want 32 bytes, or 64 hex digits (e.g. head -c 32 /dev/urandom > %s)", path, path)
}
