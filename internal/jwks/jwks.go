// Package jwks keeps the public keys of an identity provider's JWKS
// endpoint (-jwks-url) and finds the one a token names by its kid.
//
// Parsing the keys is jwkset's, and the choice of a key for a token
// keyfunc's (both github.com/MicahParks, made for golang-jwt/jwt/v5);
// this package owns only the fetching: bounded in size and time, again
// every Config.Refresh, with backoff until the first success, and at once
// (at most once per Config.UnknownKIDEvery) when a token names a kid it
// does not know, so that a rotated key is accepted without a restart.
package jwks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
)

// Config is what Keys needs to know.
type Config struct {
	URL     string        // the JWKS endpoint
	Refresh time.Duration // how often the keys are fetched again (-jwks-refresh)
	// Timeout bounds one fetch; MaxBytes its answer.
	Timeout  time.Duration
	MaxBytes int64
	// UnknownKIDEvery: a token with an unknown kid fetches the keys again
	// at most this often, whatever the kid.
	UnknownKIDEvery time.Duration
	// Client makes the requests (nil: a client of the package's own).
	Client *http.Client
}

// Keys is the current key set of a JWKS endpoint.
//
// Goroutines: the fetcher, started by Start and stopped by Close.
type Keys struct {
	cfg   Config
	log   *slog.Logger
	store *jwkset.MemoryJWKSet
	kf    keyfunc.Keyfunc

	mu         sync.Mutex
	loaded     bool      // a fetch succeeded once
	lastErr    error     // why the last fetch failed, nil after a success
	lastUnkown time.Time // when a token's unknown kid last caused a fetch
	fetching   chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// New makes the key set of cfg.URL; Start fetches it.
func New(cfg Config, log *slog.Logger) (*Keys, error) {
	if cfg.Client == nil {
		cfg.Client = &http.Client{
			Timeout: cfg.Timeout,
			// A redirect may not leave https for http.
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if req.URL.Scheme != via[0].URL.Scheme || len(via) >= 5 {
					return fmt.Errorf("redirect to %s refused", req.URL.Redacted())
				}
				return nil
			},
		}
	}
	store := jwkset.NewMemoryStorage()
	ctx, cancel := context.WithCancel(context.Background())
	kf, err := keyfunc.New(keyfunc.Options{Ctx: ctx, Storage: store})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("jwks: %w", err)
	}
	return &Keys{
		cfg: cfg, log: log, store: store, kf: kf,
		ctx: ctx, cancel: cancel,
		done: make(chan struct{}),
	}, nil
}

// Start fetches the keys now, and then again every Refresh (after a
// failure with backoff from 1 s to a minute) until Close.
func (k *Keys) Start() { go k.loop() }

// Close stops the fetcher and waits for it.
func (k *Keys) Close() {
	k.cancel()
	<-k.done
}

func (k *Keys) loop() {
	defer close(k.done)
	backoff := time.Second
	for {
		wait := k.cfg.Refresh
		if err := k.fetch(); err != nil {
			wait = backoff
			backoff = min(2*backoff, time.Minute)
		} else {
			backoff = time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-k.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// fetch gets the key set once; concurrent callers share one fetch.
func (k *Keys) fetch() error {
	k.mu.Lock()
	if ch := k.fetching; ch != nil {
		k.mu.Unlock()
		select {
		case <-ch:
		case <-k.ctx.Done():
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		return k.lastErr
	}
	ch := make(chan struct{})
	k.fetching = ch
	k.mu.Unlock()

	keys, err := k.get()
	if err == nil {
		err = k.store.KeyReplaceAll(k.ctx, keys)
	}
	k.mu.Lock()
	k.fetching = nil
	k.lastErr = err
	if err == nil {
		k.loaded = true
	}
	k.mu.Unlock()
	close(ch)
	if err != nil && k.ctx.Err() == nil {
		k.log.Warn("jwks fetch failed", "url", k.cfg.URL, "err", err)
	}
	return err
}

// get fetches and parses the key set. A key that does not parse (or of
// a kind not supported) is left out; a set without any usable key is an
// error, so that a broken answer never replaces good keys.
func (k *Keys) get() ([]jwkset.JWK, error) {
	ctx, cancel := context.WithTimeout(k.ctx, k.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.cfg.URL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.cfg.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close() //nolint:errcheck // a read body's close has nothing to say
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, k.cfg.MaxBytes+1))
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > k.cfg.MaxBytes {
		return nil, fmt.Errorf("answer larger than %d bytes", k.cfg.MaxBytes)
	}
	var set jwkset.JWKSMarshal
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("not a JWK set: %w", err)
	}
	var keys []jwkset.JWK
	var skipped []error
	for i := range set.Keys {
		// Public keys only: HS* tokens are verified with JWT_SECRET, never
		// with a key of the set.
		if set.Keys[i].USE == jwkset.UseEnc {
			continue // an encryption key never verifies a signature
		}
		jwk, err := jwkset.NewJWKFromMarshal(set.Keys[i], jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
		if err != nil {
			skipped = append(skipped, fmt.Errorf("key %q: %w", set.Keys[i].KID, err))
			continue
		}
		keys = append(keys, jwk)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("no usable key in the set (%d keys): %w", len(set.Keys), errors.Join(skipped...))
	}
	if len(skipped) > 0 {
		k.log.Warn("jwks keys left out", "url", k.cfg.URL, "err", errors.Join(skipped...))
	}
	return keys, nil
}

// Keyfunc gives golang-jwt the key a token names by its kid. A kid not
// in the set fetches the set again first, at most once per
// UnknownKIDEvery.
func (k *Keys) Keyfunc(token *jwt.Token) (any, error) {
	kid, _ := token.Header["kid"].(string)
	if kid != "" {
		if _, err := k.store.KeyRead(k.ctx, kid); errors.Is(err, jwkset.ErrKeyNotFound) && k.mayFetchForUnknown() {
			_ = k.fetch() // its error is logged; the lookup below fails
		}
	}
	return k.kf.Keyfunc(token)
}

func (k *Keys) mayFetchForUnknown() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if time.Since(k.lastUnkown) < k.cfg.UnknownKIDEvery {
		return false
	}
	k.lastUnkown = time.Now()
	return true
}

// Ready reports why the key set cannot verify tokens yet, or nil: not
// fetched once yet. (After a first success, a failed refresh keeps the
// keys it had.)
func (k *Keys) Ready() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case k.loaded:
		return nil
	case k.lastErr != nil:
		return fmt.Errorf("jwks %s: %w", k.cfg.URL, k.lastErr)
	}
	return fmt.Errorf("jwks %s: not fetched yet", k.cfg.URL)
}
