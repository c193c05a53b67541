package objstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cespare/xxhash/v2"
	"github.com/minio/minio-go/v7"
)

// An object: a header, then chunks, the last one flagged.
//
//	header = "FRYO" version(1) flags(1)
//	chunk  = length(uint32 LE, of body) last(1) body
//	body   = data xxhash64(name 0 index LE, last, data)   (no key)
//	       | nonce(12) AES-GCM(data, aad: name 0 index LE last)  (key)
const (
	magic      = "FRYO"
	version    = 1
	flagSealed = 1
	headerSize = 6
	chunkHead  = 5
	sumSize    = 8
	nonceSize  = 12
	tagSize    = 16
)

// errAborted ends an upload that was given up.
var errAborted = errors.New("objstore: write aborted")

// Writer writes one object. Nothing is visible under its name until Close
// returns nil: the upload completes at once or not at all. A Writer is not
// safe for concurrent use.
type Writer struct {
	s     *Store
	name  string
	pw    *io.PipeWriter
	done  chan error
	buf   []byte
	index uint64
	err   error
	ended bool
}

// Create starts writing the object name (replacing one of that name when
// it completes); ctx bounds the upload.
func (s *Store) Create(ctx context.Context, name string) (*Writer, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	w := &Writer{s: s, name: name, pw: pw, done: make(chan error, 1), buf: make([]byte, 0, ChunkSize+1)}
	go func() {
		_, err := s.c.PutObject(ctx, s.cfg.Bucket, s.key(name), pr, -1,
			minio.PutObjectOptions{PartSize: partSize, ContentType: "application/octet-stream"})
		pr.CloseWithError(err)
		w.done <- err
	}()
	if _, err := pw.Write(s.header(nil)); err != nil {
		w.Abort()
		return nil, fmt.Errorf("write %s: %w", name, err)
	}
	return w, nil
}

// Write adds p to the object.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := len(p)
	for len(p) > 0 {
		take := min(len(p), ChunkSize+1-len(w.buf))
		w.buf = append(w.buf, p[:take]...)
		p = p[take:]
		// A full chunk goes once more data follows it: the last chunk is
		// only known at Close.
		if len(w.buf) > ChunkSize {
			if err := w.emit(w.buf[:ChunkSize], false); err != nil {
				return 0, err
			}
			w.buf = append(w.buf[:0], w.buf[ChunkSize:]...)
		}
	}
	return n, nil
}

// emit writes one chunk.
func (w *Writer) emit(data []byte, last bool) error {
	if _, err := w.pw.Write(w.s.appendChunk(nil, w.name, w.index, last, data)); err != nil {
		return w.fail(err)
	}
	w.index++
	return nil
}

// header appends an object's header to b.
func (s *Store) header(b []byte) []byte {
	flags := byte(0)
	if s.aead != nil {
		flags |= flagSealed
	}
	return append(append(b, magic...), version, flags)
}

// appendChunk appends one chunk (its head and body) to b.
func (s *Store) appendChunk(b []byte, name string, index uint64, last bool, data []byte) []byte {
	at := len(b)
	b = append(b, 0, 0, 0, 0, 0)
	if last {
		b[at+4] = 1
	}
	b = s.frame(b, name, index, last, data)
	binary.LittleEndian.PutUint32(b[at:], uint32(len(b)-at-chunkHead))
	return b
}

func (w *Writer) fail(err error) error {
	w.err = fmt.Errorf("write %s: %w", w.name, err)
	w.pw.CloseWithError(w.err)
	return w.err
}

// Close writes the last chunk and completes the upload.
func (w *Writer) Close() error {
	if w.ended {
		return w.err
	}
	w.ended = true
	if w.err == nil {
		if err := w.emit(w.buf, true); err != nil {
			<-w.done
			return err
		}
		w.pw.Close()
		if err := <-w.done; err != nil {
			w.err = fmt.Errorf("write %s: %w", w.name, err)
		}
		return w.err
	}
	<-w.done
	return w.err
}

// Abort gives the object up: nothing is stored under its name.
func (w *Writer) Abort() {
	if w.ended {
		return
	}
	w.ended = true
	w.pw.CloseWithError(errAborted)
	<-w.done
	if w.err == nil {
		w.err = errAborted
	}
}

// aad binds a sealed chunk to its object, place and flag.
func aad(name string, index uint64, last bool) []byte {
	b := make([]byte, 0, len(name)+10)
	b = append(b, name...)
	b = append(b, 0)
	b = binary.LittleEndian.AppendUint64(b, index)
	if last {
		return append(b, 1)
	}
	return append(b, 0)
}

// sum is the checksum of an unsealed chunk, bound like a sealed one to its
// object, place and flag.
func sum(name string, index uint64, last bool, data []byte) uint64 {
	d := xxhash.New()
	d.Write(aad(name, index, last))
	d.Write(data)
	return d.Sum64()
}

// frame appends a chunk's body to dst.
func (s *Store) frame(dst []byte, name string, index uint64, last bool, data []byte) []byte {
	if s.aead == nil {
		return binary.LittleEndian.AppendUint64(append(dst, data...), sum(name, index, last, data))
	}
	dst = append(dst, make([]byte, nonceSize)...)
	nonce := dst[len(dst)-nonceSize:]
	rand.Read(nonce)
	return s.aead.Seal(dst, nonce, data, aad(name, index, last))
}

// unframe checks a chunk's body and returns its data.
func (s *Store) unframe(name string, index uint64, last bool, body []byte) ([]byte, error) {
	if s.aead == nil {
		if len(body) < sumSize {
			return nil, ErrCorrupt
		}
		data := body[:len(body)-sumSize]
		if binary.LittleEndian.Uint64(body[len(data):]) != sum(name, index, last, data) {
			return nil, ErrCorrupt
		}
		return data, nil
	}
	if len(body) < nonceSize+tagSize {
		return nil, ErrCorrupt
	}
	data, err := s.aead.Open(nil, body[:nonceSize], body[nonceSize:], aad(name, index, last))
	if err != nil {
		return nil, ErrCorrupt
	}
	return data, nil
}

// Reader reads one object, checking each chunk before handing out its
// data. It is not safe for concurrent use.
type Reader struct {
	s     *Store
	name  string
	obj   *minio.Object
	data  []byte // of the current chunk, not yet read
	index uint64
	done  bool // the last chunk was read
	err   error
}

// Open starts reading the object name: ErrNotFound when there is none,
// ErrCorrupt for one that is not an object of this store (or of its key).
func (s *Store) Open(ctx context.Context, name string) (*Reader, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	obj, err := s.c.GetObject(ctx, s.cfg.Bucket, s.key(name), minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	var head [headerSize]byte
	if _, err := io.ReadFull(obj, head[:]); err != nil {
		obj.Close()
		if notFound(err) {
			return nil, fmt.Errorf("read %s: %w", name, ErrNotFound)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("read %s: %w: no header", name, ErrCorrupt)
		}
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	sealed := head[5]&flagSealed != 0
	switch {
	case string(head[:4]) != magic || head[4] != version || head[5]&^flagSealed != 0:
		obj.Close()
		return nil, fmt.Errorf("read %s: %w: not a Ferry object", name, ErrCorrupt)
	case sealed && s.aead == nil:
		obj.Close()
		return nil, fmt.Errorf("read %s: %w: the object is encrypted and no key is configured", name, ErrCorrupt)
	case !sealed && s.aead != nil:
		obj.Close()
		return nil, fmt.Errorf("read %s: %w: the object is not encrypted but a key is configured", name, ErrCorrupt)
	}
	return &Reader{s: s, name: name, obj: obj}, nil
}

// Read reads the object's data.
func (r *Reader) Read(p []byte) (int, error) {
	for len(r.data) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.done {
			// Nothing may follow the last chunk.
			var b [1]byte
			if n, _ := r.obj.Read(b[:]); n > 0 {
				r.err = fmt.Errorf("read %s: %w: data after the last chunk", r.name, ErrCorrupt)
				return 0, r.err
			}
			r.err = io.EOF
			return 0, io.EOF
		}
		if err := r.next(); err != nil {
			r.err = err
			return 0, err
		}
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// next reads and checks the next chunk.
func (r *Reader) next() error {
	var head [chunkHead]byte
	if _, err := io.ReadFull(r.obj, head[:]); err != nil {
		return r.cut(err)
	}
	n := binary.LittleEndian.Uint32(head[:4])
	last := head[4] == 1
	if head[4] > 1 || n > ChunkSize+nonceSize+tagSize+sumSize {
		return fmt.Errorf("read %s: %w: chunk %d header", r.name, ErrCorrupt, r.index)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r.obj, body); err != nil {
		return r.cut(err)
	}
	data, err := r.s.unframe(r.name, r.index, last, body)
	if err != nil {
		return fmt.Errorf("read %s: %w: chunk %d", r.name, err, r.index)
	}
	r.data, r.done = data, last
	r.index++
	return nil
}

// cut names a read that ended early.
func (r *Reader) cut(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("read %s: %w: cut short at chunk %d", r.name, ErrCorrupt, r.index)
	}
	return fmt.Errorf("read %s: %w", r.name, err)
}

// Close ends the read.
func (r *Reader) Close() error { return r.obj.Close() }

// Put stores data as the object name in one request (the object framed in
// memory); Create streams objects too large for that.
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	if err := checkName(name); err != nil {
		return err
	}
	obj := s.header(make([]byte, 0, headerSize+len(data)+(len(data)/ChunkSize+1)*(chunkHead+nonceSize+tagSize)))
	for index := uint64(0); ; index++ {
		n := min(len(data), ChunkSize)
		last := n == len(data)
		obj = s.appendChunk(obj, name, index, last, data[:n])
		data = data[n:]
		if last {
			break
		}
	}
	if _, err := s.c.PutObject(ctx, s.cfg.Bucket, s.key(name), bytes.NewReader(obj), int64(len(obj)),
		minio.PutObjectOptions{ContentType: "application/octet-stream"}); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// Get returns the data of the object name.
func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	r, err := s.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}
