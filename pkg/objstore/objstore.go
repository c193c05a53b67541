// Package objstore keeps Ferry's objects in S3-compatible object storage
// (AWS S3, Ceph RGW, SeaweedFS, versitygw, MinIO) through minio-go: sealed
// journal segments, base images and snapshots of a journal's metadata, so
// that another process server can rebuild a VM's journal from the bucket
// alone.
//
// Every object is framed in chunks of at most ChunkSize bytes, each with
// its index and whether it is the last: a chunk that was changed, moved,
// dropped or added, and an object that was cut short, are refused with
// ErrCorrupt when read. Without a key each chunk carries the xxhash64 of
// the object's name, its index, the flag and the data; with a key (32 bytes) each chunk is sealed with
// AES-256-GCM bound to the object's name, its index and the flag, so an
// object copied under another name does not open either. Objects are
// streamed: neither end holds more than a chunk and the client's upload
// part at once.
package objstore

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Errors of the store.
var (
	// ErrNotFound: no object of that name.
	ErrNotFound = errors.New("object not found")
	// ErrCorrupt: an object's framing, checksum or seal does not hold.
	ErrCorrupt = errors.New("object corrupt")
	// ErrNoBucket: the bucket does not exist.
	ErrNoBucket = errors.New("bucket does not exist")
)

// ChunkSize bounds the data of one chunk of an object.
const ChunkSize = 4 << 20

// partSize is the multipart upload's part size: the most the client holds
// of an object being written.
const partSize = 16 << 20

// Config says where the objects are.
type Config struct {
	// Endpoint is the server's host:port.
	Endpoint string
	// TLS: https (else http, for servers on a trusted network).
	TLS bool
	// AccessKey and SecretKey sign requests.
	AccessKey, SecretKey string
	// Region of the bucket (default us-east-1).
	Region string
	// Bucket and Prefix name where objects go: Prefix/NAME in Bucket.
	Bucket, Prefix string
	// Key (32 bytes) seals every chunk with AES-256-GCM; nil: checksums
	// only.
	Key []byte
}

// ParseURL splits s3://BUCKET[/PREFIX] into its bucket and prefix.
func ParseURL(s string) (bucket, prefix string, err error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "s3" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", "", fmt.Errorf("store %q: want s3://BUCKET[/PREFIX]", s)
	}
	return u.Host, strings.Trim(u.Path, "/"), nil
}

// Store is a bucket (under a prefix) of framed objects. It is safe for
// concurrent use.
type Store struct {
	cfg  Config
	c    *minio.Client
	aead cipher.AEAD // nil: checksums only
}

// Open connects to the server and checks that the bucket exists.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Endpoint == "" || cfg.Bucket == "" {
		return nil, errors.New("objstore: an endpoint and a bucket are required")
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	cfg.Prefix = strings.Trim(cfg.Prefix, "/")
	c, err := minio.New(cfg.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure: cfg.TLS, Region: cfg.Region})
	if err != nil {
		return nil, fmt.Errorf("objstore %s: %w", cfg.Endpoint, err)
	}
	s := &Store{cfg: cfg, c: c}
	if cfg.Key != nil {
		if len(cfg.Key) != 32 {
			return nil, fmt.Errorf("objstore: key of %d bytes, want 32", len(cfg.Key))
		}
		block, err := aes.NewCipher(cfg.Key)
		if err != nil {
			return nil, err
		}
		if s.aead, err = cipher.NewGCM(block); err != nil {
			return nil, err
		}
	}
	ok, err := c.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("objstore %s: bucket %s: %w", cfg.Endpoint, cfg.Bucket, err)
	}
	if !ok {
		return nil, fmt.Errorf("objstore %s: %w: %s", cfg.Endpoint, ErrNoBucket, cfg.Bucket)
	}
	return s, nil
}

// CreateBucket makes the bucket of cfg if it does not exist (setting up a
// site, and tests).
func CreateBucket(ctx context.Context, cfg Config) error {
	c, err := minio.New(cfg.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure: cfg.TLS, Region: cfg.Region})
	if err != nil {
		return err
	}
	ok, err := c.BucketExists(ctx, cfg.Bucket)
	if err != nil || ok {
		return err
	}
	return c.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region})
}

// key is the object key of a name.
func (s *Store) key(name string) string {
	if s.cfg.Prefix == "" {
		return name
	}
	return s.cfg.Prefix + "/" + name
}

// checkName refuses names that would escape the prefix or are not plain.
func checkName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") || strings.Contains(name, "//") {
		return fmt.Errorf("objstore: object name %q", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == "." || part == ".." {
			return fmt.Errorf("objstore: object name %q", name)
		}
	}
	return nil
}

// Delete removes an object; a missing one is not an error.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := s.c.RemoveObject(ctx, s.cfg.Bucket, s.key(name), minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// List returns the names of the objects under prefix (a name's leading
// part), in order.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	objs, err := s.ListObjects(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = o.Name
	}
	return out, nil
}

// Object is a listed object: its name and its size in the bucket (framing
// included).
type Object struct {
	Name string
	Size int64
}

// ListObjects is List with each object's size.
func (s *Store) ListObjects(ctx context.Context, prefix string) ([]Object, error) {
	var out []Object
	for o := range s.c.ListObjects(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: s.key(prefix), Recursive: true}) {
		if o.Err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, o.Err)
		}
		name := o.Key
		if s.cfg.Prefix != "" {
			name = strings.TrimPrefix(name, s.cfg.Prefix+"/")
		}
		out = append(out, Object{Name: name, Size: o.Size})
	}
	return out, nil
}

// notFound reports whether err is the server's answer for a missing
// object.
func notFound(err error) bool {
	code := minio.ToErrorResponse(err).Code
	return code == "NoSuchKey" || code == "NotFound"
}
