package jwks

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"go-pusher/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start runs Keys on url until the test ends.
func start(t *testing.T, url string, cfg Config) *Keys {
	t.Helper()
	cfg.URL = url
	if cfg.Refresh == 0 {
		cfg.Refresh = time.Hour
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = 64 << 10
	}
	if cfg.UnknownKIDEvery == 0 {
		cfg.UnknownKIDEvery = 30 * time.Second
	}
	k, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	k.Start()
	t.Cleanup(k.Close)
	return k
}

// verify parses token with k's keys, any asymmetric method.
func verify(k *Keys, token string) error {
	_, err := jwt.Parse(token, k.Keyfunc, jwt.WithValidMethods([]string{"RS256", "PS256", "ES256", "ES384", "EdDSA"}))
	return err
}

var claims = jwt.MapClaims{"sub": "alice"}

// TestEveryKind: RSA, RSA-PSS, EC and Ed25519 keys verify their tokens,
// each chosen by its kid; a token signed by a key not in the set does not.
func TestEveryKind(t *testing.T) {
	keys := []testutil.SigningKey{
		testutil.NewSigningKey(t, "rs", jwt.SigningMethodRS256),
		testutil.NewSigningKey(t, "ps", jwt.SigningMethodPS256),
		testutil.NewSigningKey(t, "es", jwt.SigningMethodES256),
		testutil.NewSigningKey(t, "es384", jwt.SigningMethodES384),
		testutil.NewSigningKey(t, "ed", jwt.SigningMethodEdDSA),
	}
	srv := testutil.StartJWKSServer(t, keys...)
	k := start(t, srv.URL(), Config{})
	testutil.WaitFor(t, "keys fetched", func() bool { return k.Ready() == nil })
	for _, key := range keys {
		if err := verify(k, key.Sign(t, claims)); err != nil {
			t.Errorf("%s (%s): %v", key.KID, key.Method.Alg(), err)
		}
	}
	stranger := testutil.NewSigningKey(t, "rs", jwt.SigningMethodRS256) // the same kid, another key
	if err := verify(k, stranger.Sign(t, claims)); err == nil {
		t.Error("a token signed by a key not in the set verified")
	}
}

// TestRotation: a token with a kid the set does not have fetches the set
// at once (a rotated key works without waiting for the refresh), at most
// once per UnknownKIDEvery whatever the kid; a key removed from the set
// stops verifying at the next fetch.
func TestRotation(t *testing.T) {
	old := testutil.NewSigningKey(t, "old", jwt.SigningMethodES256)
	srv := testutil.StartJWKSServer(t, old)
	k := start(t, srv.URL(), Config{UnknownKIDEvery: time.Hour})
	testutil.WaitFor(t, "keys fetched", func() bool { return k.Ready() == nil })
	if err := verify(k, old.Sign(t, claims)); err != nil {
		t.Fatal(err)
	}
	fetches := srv.Requests.Load()

	rotated := testutil.NewSigningKey(t, "new", jwt.SigningMethodES256)
	srv.SetKeys(t, rotated) // old is removed
	if err := verify(k, rotated.Sign(t, claims)); err != nil {
		t.Errorf("a token of the rotated-in key: %v", err)
	}
	if n := srv.Requests.Load() - fetches; n != 1 {
		t.Errorf("the unknown kid made %d fetches, want 1", n)
	}
	if err := verify(k, old.Sign(t, claims)); err == nil {
		t.Error("the removed key still verifies after the fetch")
	}
	another := testutil.NewSigningKey(t, "newer", jwt.SigningMethodES256)
	srv.SetKeys(t, rotated, another)
	if err := verify(k, another.Sign(t, claims)); err == nil {
		t.Error("a second unknown kid within UnknownKIDEvery fetched again")
	}
	if n := srv.Requests.Load() - fetches; n != 1 {
		t.Errorf("%d fetches after two unknown kids within the limit, want 1", n)
	}
}

// TestUnreachableAtStart: Ready names the endpoint until a fetch
// succeeds; the fetcher retries with backoff (from 1 s) by itself.
func TestUnreachableAtStart(t *testing.T) {
	key := testutil.NewSigningKey(t, "k", jwt.SigningMethodEdDSA)
	srv := testutil.StartJWKSServer(t, key)
	srv.SetBody(nil) // 500s
	k := start(t, srv.URL(), Config{})
	testutil.WaitFor(t, "a failed fetch", func() bool { return srv.Requests.Load() >= 1 })
	if err := k.Ready(); err == nil || !strings.Contains(err.Error(), srv.URL()) {
		t.Errorf("Ready while the JWKS fails = %v, want an error naming %s", err, srv.URL())
	}
	srv.SetKeys(t, key)
	testutil.WaitFor(t, "ready after a retry", func() bool { return k.Ready() == nil })
	if err := verify(k, key.Sign(t, claims)); err != nil {
		t.Error(err)
	}
}

// TestBadAnswersKeepTheKeys: garbage, a set without a usable key, an
// answer past MaxBytes or slower than Timeout fail the fetch, and the keys
// from before stay in use.
func TestBadAnswersKeepTheKeys(t *testing.T) {
	key := testutil.NewSigningKey(t, "k", jwt.SigningMethodES256)
	srv := testutil.StartJWKSServer(t, key)
	k := start(t, srv.URL(), Config{Timeout: 300 * time.Millisecond, MaxBytes: 4 << 10})
	testutil.WaitFor(t, "keys fetched", func() bool { return k.Ready() == nil })
	good := key.Sign(t, claims)
	for _, bad := range []struct {
		name  string
		body  []byte
		delay time.Duration
		want  string
	}{
		{"garbage", []byte("<html>not json"), 0, "not a JWK set"},
		{"no usable key", []byte(`{"keys":[{"kty":"XYZ","kid":"k"}]}`), 0, "no usable key"},
		{"too large", append(append([]byte(`{"keys":[],"pad":"`), bytes.Repeat([]byte("x"), 8<<10)...), '"', '}'), 0, "larger than"},
		{"too slow", []byte(`{"keys":[]}`), time.Second, "deadline"},
	} {
		srv.SetBody(bad.body)
		srv.SetDelay(bad.delay)
		err := k.fetch()
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: fetch = %v, want an error with %q", bad.name, err, bad.want)
		}
		if err := verify(k, good); err != nil {
			t.Errorf("%s: the key from before: %v", bad.name, err)
		}
		if err := k.Ready(); err != nil {
			t.Errorf("%s: Ready = %v after a first success", bad.name, err)
		}
	}
}

// TestPeriodicRefresh: the set is fetched again every Refresh: a key
// removed there stops verifying without any token asking.
func TestPeriodicRefresh(t *testing.T) {
	old := testutil.NewSigningKey(t, "old", jwt.SigningMethodEdDSA)
	srv := testutil.StartJWKSServer(t, old)
	k := start(t, srv.URL(), Config{Refresh: 100 * time.Millisecond, UnknownKIDEvery: time.Hour})
	testutil.WaitFor(t, "keys fetched", func() bool { return k.Ready() == nil })
	if err := verify(k, old.Sign(t, claims)); err != nil {
		t.Fatal(err)
	}
	srv.SetKeys(t, testutil.NewSigningKey(t, "new", jwt.SigningMethodEdDSA))
	n := srv.Requests.Load()
	testutil.WaitFor(t, "two periodic fetches", func() bool { return srv.Requests.Load() >= n+2 })
	if _, err := k.store.KeyRead(k.ctx, "old"); err == nil {
		t.Error("the removed key is still in the set after the periodic fetches")
	}
}
