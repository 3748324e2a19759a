package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

// cfEngine is a tiny run against the fake Centrifugo fc.
func cfEngine(fc *fakeCentrifugo, scenario string, opts ...func(*Engine)) *Engine {
	return testEngineAt(fc.URL, scenario, append([]func(*Engine){func(e *Engine) {
		e.Target, e.CentrifugoNamespace = targetCentrifugo, "personal"
	}}, opts...)...)
}

// TestCentrifugoSend: 300 publications, some batched several to a frame,
// all arrive once and in order while the connections answer pings.
func TestCentrifugoSend(t *testing.T) {
	// A ping unanswered by the next one closes the connection: 100 ms
	// leaves a loaded CI machine (-race, packages in parallel) time to
	// answer.
	fc := newFakeCentrifugo(t, cfFaults{batch: true, pingInterval: 100 * time.Millisecond})
	rep := measure(t, cfEngine(fc, scenarioSend, func(e *Engine) { e.ConnsPerUser, e.Rate = 2, 1000 }))
	wantClean(t, rep)
	wantLatency(t, rep)
	if rep.Requests != 300 || rep.Accepted != 300 || rep.Delivered != 600 || rep.Expected != 600 {
		t.Errorf("requests %d, accepted %d, delivered %d, expected %d; want 300, 300, 600, 600", rep.Requests, rep.Accepted, rep.Delivered, rep.Expected)
	}
	if fc.published.Load() != 300 {
		t.Errorf("the fake got %d publications, want 300", fc.published.Load())
	}
	// 300 requests at 1000/s take 0.3 s: some 3 pings on each of the 20
	// connections.
	if fc.pongs.Load() < 20 {
		t.Errorf("the fake got %d pongs, want pings answered", fc.pongs.Load())
	}
	if rep.Target != targetCentrifugo || !strings.Contains(e2text(t, rep), "target:") {
		t.Errorf("report target %q: want %q, shown", rep.Target, targetCentrifugo)
	}
}

func TestCentrifugoIdle(t *testing.T) {
	fc := newFakeCentrifugo(t, cfFaults{})
	rep := measure(t, cfEngine(fc, scenarioIdle, func(e *Engine) { e.Users, e.ConnsPerUser = 8, 2 }))
	wantClean(t, rep)
	if rep.Connected != 16 || rep.After == nil || rep.After.Connections != 16 {
		t.Errorf("connected %d, server state while held %+v; want 16 and 16 connections", rep.Connected, rep.After)
	}
}

// TestCentrifugoFaultsShow: a lost publication, a refused publish, a bad
// token or a missing personal channel fail the run with a report that
// says so.
func TestCentrifugoFaultsShow(t *testing.T) {
	tests := []struct {
		name  string
		f     cfFaults
		opt   func(*Engine)
		check func(*Report) bool
	}{
		{"lost", cfFaults{dropEvery: 50}, nil, func(r *Report) bool { return r.Lost == 6 && r.Delivered == 294 && r.Accepted == 300 }},
		{"lost in batched frames", cfFaults{dropEvery: 50, batch: true}, nil, func(r *Report) bool { return r.Lost == 6 && r.Delivered == 294 }},
		{"publish refused", cfFaults{refuse: true}, nil, func(r *Report) bool {
			return r.Accepted == 0 && r.Requests >= giveUpAfter && r.SendErrors["api error 103 permission denied"] == r.Requests &&
				strings.Contains(strings.Join(r.Problems, ";"), "in a row got no answer (api error 103 permission denied)")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := newFakeCentrifugo(t, tt.f)
			e := cfEngine(fc, scenarioSend, func(e *Engine) { e.Drain, e.JSON = time.Second, true })
			if tt.opt != nil {
				tt.opt(e)
			}
			wantFaultReported(t, e, tt.check)
		})
	}
}

// TestCentrifugoConnectRefused: a connection Centrifugo refuses (bad
// token, no personal channel) is a failed handshake, with the reason.
func TestCentrifugoConnectRefused(t *testing.T) {
	tests := []struct {
		name string
		f    cfFaults
		opt  func(*Engine)
		want string
	}{
		{"bad token", cfFaults{}, func(e *Engine) { e.JWTSecret = "not-the-server-secret" }, "connect: closed 3500 invalid token"},
		{"no personal channel", cfFaults{noSub: true}, func(*Engine) {}, "connect: not subscribed to the personal channel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := newFakeCentrifugo(t, tt.f)
			rep, err := cfEngine(fc, scenarioSend, tt.opt).Measure(context.Background())
			if err == nil || rep == nil || rep.Result != "FAIL" || rep.Connected != 0 {
				t.Fatalf("Measure = %+v, %v; want a failed connect", rep, err)
			}
			// Not always all 10: the run aborts once the last dial is
			// done, and a slot stopped then does not report its error.
			if len(rep.DialErrors) != 1 {
				t.Errorf("dial errors %v, want only %q", rep.DialErrors, tt.want)
			}
			for k := range rep.DialErrors {
				if !strings.HasPrefix(k, tt.want) {
					t.Errorf("dial errors %v, want only %q", rep.DialErrors, tt.want)
				}
			}
		})
	}
}

func TestCentrifugoValidate(t *testing.T) {
	tests := []struct {
		name string
		opt  func(*Engine)
		want string
	}{
		{"unknown target", func(e *Engine) { e.Target = "nchan" }, `invalid -target "nchan"`},
		{"scenario", func(e *Engine) { e.Scenario = scenarioBatch }, "runs the idle and send scenarios"},
		{"form", func(e *Engine) { e.Form = true }, "-form is go-pusher's"},
		{"namespace", func(e *Engine) { e.CentrifugoNamespace = `a"b` }, "invalid -centrifugo-namespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := testEngineAt("http://127.0.0.1:1", scenarioSend, func(e *Engine) { e.Target = targetCentrifugo }, tt.opt)
			if err := e.validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("validate() = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestPersonalChannel(t *testing.T) {
	for _, tt := range []struct{ ns, uid, want string }{{"personal", "u1", "personal:#u1"}, {"", "u1", "#u1"}} {
		if got := personalChannel(tt.ns, tt.uid); got != tt.want {
			t.Errorf("personalChannel(%q, %q) = %q, want %q", tt.ns, tt.uid, got, tt.want)
		}
	}
}
