package testutil

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// SigningKey is an identity provider's private key and the kid and
// algorithm its tokens carry.
type SigningKey struct {
	KID    string
	Method jwt.SigningMethod
	Key    crypto.Signer
}

// NewSigningKey makes a key for method: RS*/PS* (RSA 2048), ES256/384/512
// (P-256/384/521) or EdDSA (Ed25519).
func NewSigningKey(t testing.TB, kid string, method jwt.SigningMethod) SigningKey {
	t.Helper()
	var key crypto.Signer
	var err error
	switch method.Alg() {
	case "ES256":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ES384":
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ES512":
		key, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "EdDSA":
		_, key, err = ed25519.GenerateKey(rand.Reader)
	default:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	}
	if err != nil {
		t.Fatal(err)
	}
	return SigningKey{KID: kid, Method: method, Key: key}
}

// Sign makes a token of claims with k (its kid in the header).
func (k SigningKey) Sign(t testing.TB, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(k.Method, claims)
	tok.Header["kid"] = k.KID
	s, err := tok.SignedString(k.Key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// JWKSServer is an identity provider's JWKS endpoint on loopback: its key
// set can change (rotation), and it can fail, answer garbage, too much or
// too slowly.
type JWKSServer struct {
	*httptest.Server
	Requests atomic.Int64

	mu    sync.Mutex
	body  []byte        // the answer; nil: 500
	delay time.Duration // before answering
}

// StartJWKSServer serves the public halves of keys until the test ends.
func StartJWKSServer(t testing.TB, keys ...SigningKey) *JWKSServer {
	t.Helper()
	s := &JWKSServer{}
	s.SetKeys(t, keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.Requests.Add(1)
		s.mu.Lock()
		body, delay := s.body, s.delay
		s.mu.Unlock()
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		if body == nil {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

// URL is the JWKS's address.
func (s *JWKSServer) URL() string { return s.Server.URL + "/jwks.json" }

// SetKeys makes the set the public halves of keys.
func (s *JWKSServer) SetKeys(t testing.TB, keys ...SigningKey) {
	t.Helper()
	set := jwkset.NewMemoryStorage()
	for _, k := range keys {
		jwk, err := jwkset.NewJWKFromKey(k.Key.Public(), jwkset.JWKOptions{
			Metadata: jwkset.JWKMetadataOptions{KID: k.KID, ALG: jwkset.ALG(k.Method.Alg()), USE: jwkset.UseSig},
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := set.KeyWrite(context.Background(), jwk); err != nil {
			t.Fatal(err)
		}
	}
	body, err := set.JSONPublic(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.SetBody(body)
}

// SetBody makes the answer body (nil: a 500).
func (s *JWKSServer) SetBody(body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body = body
}

// SetDelay makes every answer wait d first.
func (s *JWKSServer) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}
