package main

import (
	"net/url"
	"testing"
)

func TestRedactURL(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"/ws", "/ws"},
		{"/ws?token=abc.def.ghi", "/ws?token=REDACTED"},
		{"/ws?format=json&Token=x&since=1:2", "/ws?Token=REDACTED&format=json&since=1%3A2"},
		{"/ws?%74oken=s3cret", "/ws?token=REDACTED"},
		{"/ws?tok%65n=s3cret&format=json", "/ws?format=json&token=REDACTED"},
		{"/ws?token=s3cret;x=1", "/ws"},
		{"/ws?token=%zzs3cret", "/ws"},
	} {
		u, err := url.Parse(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := redactURL(u); got != tt.want {
			t.Errorf("redactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
