package main

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"go-pusher/internal/stream"
)

// Authenticator decides who a /ws request is (the article's interface).
// It returns the identity or an error whose text is the reason sent to the
// client after "authenticate error: ".
type Authenticator interface {
	Authenticate(r *http.Request) (Identity, error)
}

// Identity is an authenticated user.
type Identity struct {
	UID string
	// ExpiresAt is when the credential expires; the connection is closed
	// with 1008 "token expired" then. Zero: never.
	ExpiresAt time.Time
}

// authError is a refused handshake: Reason goes to the client, Metric is
// the reason label of pusher_auth_failures_total.
type authError struct {
	Metric string
	Reason string
}

func (e *authError) Error() string { return e.Reason }

// The reason labels of pusher_auth_failures_total.
const (
	authMissingToken    = "missing_token"
	authInvalidToken    = "invalid_token"
	authTokenExpired    = "token_expired"
	authOrigin          = "origin"
	authConnectionLimit = "connection_limit"
)

var authReasons = []string{authMissingToken, authInvalidToken, authTokenExpired, authOrigin, authConnectionLimit}

// hmacMethods are the only algorithms a token may use: anything else
// (none, RS*, ES*: a public-key algorithm checked against our HMAC secret
// is the classic confusion attack) is refused.
var hmacMethods = []string{"HS256", "HS384", "HS512"}

// JWTAuthenticator checks HMAC-signed JWTs with a uid claim.
type JWTAuthenticator struct {
	secret []byte
	parser *jwt.Parser
	now    func() time.Time
}

var _ Authenticator = (*JWTAuthenticator)(nil)

// NewJWTAuthenticator returns an authenticator for tokens signed with secret.
func NewJWTAuthenticator(secret string, now func() time.Time) *JWTAuthenticator {
	return &JWTAuthenticator{
		secret: []byte(secret),
		parser: jwt.NewParser(jwt.WithValidMethods(hmacMethods), jwt.WithTimeFunc(now)),
		now:    now,
	}
}

// claims are the token's claims: the article's uid plus the registered ones.
type claims struct {
	UID any `json:"uid"`
	jwt.RegisteredClaims
}

// Authenticate reads the token from ?token= (what browsers can send) or
// from "Authorization: Bearer".
func (a *JWTAuthenticator) Authenticate(r *http.Request) (Identity, error) {
	token := r.URL.Query().Get("token")
	if token == "" {
		token = bearer(r.Header.Get("Authorization"))
	}
	if token == "" {
		return Identity{}, &authError{authMissingToken, "token is missing"}
	}
	return a.ParseToken(token)
}

// ParseToken checks a token and returns its identity.
func (a *JWTAuthenticator) ParseToken(token string) (Identity, error) {
	var c claims
	_, err := a.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return a.secret, nil })
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenExpired):
		return Identity{}, &authError{authTokenExpired, "token is expired"}
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return Identity{}, &authError{authInvalidToken, "token is not valid yet"}
	case errors.Is(err, jwt.ErrTokenMalformed):
		return Identity{}, &authError{authInvalidToken, "token is malformed"}
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return Identity{}, &authError{authInvalidToken, "token signature is invalid"}
	default:
		return Identity{}, &authError{authInvalidToken, "token is invalid"}
	}
	uid, ok := c.UID.(string)
	if !ok {
		return Identity{}, &authError{authInvalidToken, "token has no string uid claim"}
	}
	if err := stream.CheckUID(uid); err != nil {
		return Identity{}, &authError{authInvalidToken, "token uid claim " + err.Error()}
	}
	id := Identity{UID: uid}
	if c.ExpiresAt != nil {
		id.ExpiresAt = c.ExpiresAt.Time
	}
	return id, nil
}

// bearer returns the credential of an Authorization header value
// "Bearer <x>", or "".
func bearer(h string) string {
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// IssueToken returns an HS256 token for uid, expiring after ttl (0: never).
func IssueToken(secret, uid string, ttl time.Duration, now time.Time) (string, error) {
	if err := stream.CheckUID(uid); err != nil {
		return "", fmt.Errorf("uid %w", err)
	}
	c := claims{UID: uid, RegisteredClaims: jwt.RegisteredClaims{IssuedAt: jwt.NewNumericDate(now)}}
	if ttl > 0 {
		c.ExpiresAt = jwt.NewNumericDate(now.Add(ttl))
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(secret))
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}
