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
	// IssuedAt is the token's iat; zero when it has none.
	IssuedAt time.Time
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

// hmacMethods verify with JWT_SECRET only, asymmetricMethods with the
// JWKS only: a token's algorithm picks its key, so a public key is never
// taken for an HMAC secret (the classic confusion attack) nor the reverse,
// and none is refused.
var (
	hmacMethods       = []string{"HS256", "HS384", "HS512"}
	asymmetricMethods = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

// KeySource finds the public key of an asymmetric token
// (internal/jwks.Keys).
type KeySource interface {
	Keyfunc(token *jwt.Token) (any, error)
}

// AuthOptions are the identity provider settings of an authenticator.
type AuthOptions struct {
	Keys     KeySource // -jwks-url; nil: asymmetric tokens are refused
	Issuer   string    // -jwt-issuer: iss must equal it when set
	Audience string    // -jwt-audience: aud must contain it when set
	UIDClaim string    // -jwt-uid-claim: the claim that holds the uid ("": uid)
}

// JWTAuthenticator checks JWTs: HMAC-signed ones with JWT_SECRET,
// asymmetric ones with the keys of a JWKS.
type JWTAuthenticator struct {
	secret   []byte // nil: HS* tokens are refused
	keys     KeySource
	uidClaim string
	parser   *jwt.Parser
	now      func() time.Time
}

var _ Authenticator = (*JWTAuthenticator)(nil)

// NewJWTAuthenticator returns an authenticator for tokens signed with secret.
func NewJWTAuthenticator(secret string, now func() time.Time) *JWTAuthenticator {
	return NewAuthenticator(secret, AuthOptions{}, now)
}

// NewAuthenticator returns an authenticator for tokens signed with secret
// (when not empty) or with a key of o.Keys (when set).
func NewAuthenticator(secret string, o AuthOptions, now func() time.Time) *JWTAuthenticator {
	a := &JWTAuthenticator{keys: o.Keys, uidClaim: o.UIDClaim, now: now}
	if a.uidClaim == "" {
		a.uidClaim = "uid"
	}
	var methods []string
	if secret != "" {
		a.secret = []byte(secret)
		methods = append(methods, hmacMethods...)
	}
	if o.Keys != nil {
		methods = append(methods, asymmetricMethods...)
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithTimeFunc(now)}
	if o.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(o.Issuer))
	}
	if o.Audience != "" {
		opts = append(opts, jwt.WithAudience(o.Audience))
	}
	a.parser = jwt.NewParser(opts...)
	return a
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

// key is the key that verifies t: JWT_SECRET for HS*, the JWKS's for
// the others (the parser allows only the methods of the keys there are).
func (a *JWTAuthenticator) key(t *jwt.Token) (any, error) {
	if _, ok := t.Method.(*jwt.SigningMethodHMAC); ok {
		return a.secret, nil
	}
	if kid, _ := t.Header["kid"].(string); kid == "" {
		return nil, errors.New("an asymmetric token names its key with kid")
	}
	return a.keys.Keyfunc(t)
}

// ParseToken checks a token and returns its identity.
func (a *JWTAuthenticator) ParseToken(token string) (Identity, error) {
	c := jwt.MapClaims{}
	_, err := a.parser.ParseWithClaims(token, c, a.key)
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenExpired):
		return Identity{}, &authError{authTokenExpired, "token is expired"}
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return Identity{}, &authError{authInvalidToken, "token is not valid yet"}
	case errors.Is(err, jwt.ErrTokenMalformed), errors.Is(err, jwt.ErrInvalidType):
		// ErrInvalidType: a registered claim of the wrong type ("exp": "soon").
		return Identity{}, &authError{authInvalidToken, "token is malformed"}
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return Identity{}, &authError{authInvalidToken, "token issuer is not accepted"}
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return Identity{}, &authError{authInvalidToken, "token audience is not accepted"}
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		// -jwt-issuer or -jwt-audience is set and the token lacks it.
		return Identity{}, &authError{authInvalidToken, "token lacks its iss or aud claim"}
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return Identity{}, &authError{authInvalidToken, "token signature is invalid"}
	default:
		return Identity{}, &authError{authInvalidToken, "token is invalid"}
	}
	uid, ok := c[a.uidClaim].(string)
	if !ok {
		return Identity{}, &authError{authInvalidToken, "token has no string " + a.uidClaim + " claim"}
	}
	if err := stream.CheckUID(uid); err != nil {
		return Identity{}, &authError{authInvalidToken, "token " + a.uidClaim + " claim " + err.Error()}
	}
	id := Identity{UID: uid}
	if exp, err := c.GetExpirationTime(); err == nil && exp != nil {
		id.ExpiresAt = exp.Time
	}
	if iat, err := c.GetIssuedAt(); err == nil && iat != nil {
		id.IssuedAt = iat.Time
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
	return IssueTokenAt(secret, uid, ttl, now, now)
}

// IssueTokenAt is IssueToken with an iat of its own.
func IssueTokenAt(secret, uid string, ttl time.Duration, now, iat time.Time) (string, error) {
	if err := stream.CheckUID(uid); err != nil {
		return "", fmt.Errorf("uid %w", err)
	}
	c := claims{UID: uid, RegisteredClaims: jwt.RegisteredClaims{IssuedAt: jwt.NewNumericDate(iat)}}
	if ttl > 0 {
		c.ExpiresAt = jwt.NewNumericDate(now.Add(ttl))
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(secret))
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}
