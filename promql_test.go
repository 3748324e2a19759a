package main

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// A small PromQL tokenizer for the deploy tests: which metrics, with which
// label names, the dashboard's and the alert rules' expressions read.

// promSelector is a metric a PromQL expression reads, with the label
// names its matchers use.
type promSelector struct {
	metric string
	labels []string
}

// promqlKeywords are the words of PromQL that are not metric names:
// operators, modifiers and the aggregations (which may be followed by
// by/without instead of a parenthesis).
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "atan2": true, "bool": true, "offset": true,
	"inf": true, "nan": true,
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// promqlLabelList is what the parentheses after by, on, ... may hold.
var promqlLabelList = regexp.MustCompile(`^[\s\w,"'.]*$`)

// promqlGrouping are the modifiers followed by a list of label names.
var promqlGrouping = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// promqlSelectors returns the metrics expr reads and the label names of
// their matchers. It is a tokenizer, not a parser (adding Prometheus's
// parser would pull the whole prometheus module into go.mod for a test):
// an identifier is a metric name unless it is a keyword, a function (an
// identifier followed by a parenthesis) or in a by/on/... label list;
// strings, [ranges] and Grafana's $variables are skipped. It refuses what
// it cannot answer: a selector without a name, a __name__ regex, an
// unterminated string or bracket. promtool checks the syntax itself
// (TestGrafanaDashboard, TestPrometheusRules).
func promqlSelectors(expr string) ([]promSelector, error) {
	var out []promSelector
	s := expr
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			end, err := promqlStringEnd(s, i)
			if err != nil {
				return nil, err
			}
			i = end
		case c == '[':
			end := strings.IndexByte(s[i:], ']')
			if end < 0 {
				return nil, fmt.Errorf("unterminated [ at %d", i)
			}
			i += end + 1
		case c == '$':
			i++
			if i < len(s) && s[i] == '{' {
				end := strings.IndexByte(s[i:], '}')
				if end < 0 {
					return nil, fmt.Errorf("unterminated ${ at %d", i)
				}
				i += end + 1
				break
			}
			for i < len(s) && isPromIdent(s[i], true) {
				i++
			}
		case c == '{':
			sel, end, err := promqlMatchers(s, i, "")
			if err != nil {
				return nil, err
			}
			out, i = append(out, sel), end
		case isPromIdent(c, false):
			start := i
			for i < len(s) && isPromIdent(s[i], true) {
				i++
			}
			word := s[start:i]
			next := i
			for next < len(s) && strings.ContainsRune(" \t\r\n", rune(s[next])) {
				next++
			}
			lower := strings.ToLower(word)
			switch {
			case promqlGrouping[lower]:
				if next < len(s) && s[next] == '(' {
					end := strings.IndexByte(s[next:], ')')
					if end < 0 || !promqlLabelList.MatchString(s[next+1:next+end]) {
						return nil, fmt.Errorf("%s at %d: want a list of label names in parentheses", word, start)
					}
					i = next + end + 1
				}
			case promqlKeywords[lower] || (next < len(s) && s[next] == '('):
				// a keyword, an aggregation or a function
			case next < len(s) && s[next] == '{':
				sel, end, err := promqlMatchers(s, next, word)
				if err != nil {
					return nil, err
				}
				out, i = append(out, sel), end
			default:
				out = append(out, promSelector{metric: word})
			}
		case c >= '0' && c <= '9' || c == '.':
			// a number or a duration: digits, letters, dots
			for i < len(s) && (isPromIdent(s[i], true) || s[i] == '.') {
				i++
			}
		default:
			i++ // an operator, a parenthesis, a comma, @
		}
	}
	return out, nil
}

// promqlMatchers reads the {...} at s[open] of a selector of metric (empty
// for a selector that names it inside the braces) and returns the
// selector and the index after the }.
func promqlMatchers(s string, open int, metric string) (promSelector, int, error) {
	sel := promSelector{metric: metric}
	i := open + 1
	skipSpace := func() {
		for i < len(s) && strings.ContainsRune(" \t\r\n,", rune(s[i])) {
			i++
		}
	}
	for {
		skipSpace()
		if i >= len(s) {
			return sel, 0, fmt.Errorf("unterminated { at %d", open)
		}
		if s[i] == '}' {
			break
		}
		var name string
		switch {
		case s[i] == '"' || s[i] == '\'' || s[i] == '`':
			end, err := promqlStringEnd(s, i)
			if err != nil {
				return sel, 0, err
			}
			name, i = s[i+1:end-1], end // names hold no escapes
		case isPromIdent(s[i], false):
			start := i
			for i < len(s) && isPromIdent(s[i], true) {
				i++
			}
			name = s[start:i]
		default:
			return sel, 0, fmt.Errorf("unexpected %q in { at %d", s[i], i)
		}
		for i < len(s) && strings.ContainsRune(" \t\r\n", rune(s[i])) {
			i++
		}
		op := ""
		for i < len(s) && strings.ContainsRune("=!~", rune(s[i])) {
			op += string(s[i])
			i++
		}
		if op == "" { // a quoted metric name alone (Prometheus 3)
			sel.metric = name
			continue
		}
		for i < len(s) && strings.ContainsRune(" \t\r\n", rune(s[i])) {
			i++
		}
		if i >= len(s) || !strings.ContainsRune("\"'`", rune(s[i])) {
			return sel, 0, fmt.Errorf("label %s: value is not a string", name)
		}
		end, err := promqlStringEnd(s, i)
		if err != nil {
			return sel, 0, err
		}
		switch {
		case name == "__name__" && op == "=":
			sel.metric = s[i+1 : end-1]
		case name == "__name__":
			return sel, 0, fmt.Errorf("__name__%s matches names this check cannot list", op)
		default:
			sel.labels = append(sel.labels, name)
		}
		i = end
	}
	if sel.metric == "" {
		return sel, 0, fmt.Errorf("selector at %d has no metric name", open)
	}
	return sel, i + 1, nil
}

// promqlStringEnd returns the index after the string literal at s[start]
// (double, single or back quotes; backslash escapes in the first two).
func promqlStringEnd(s string, start int) (int, error) {
	q := s[start]
	for i := start + 1; i < len(s); i++ {
		switch {
		case s[i] == '\\' && q != '`':
			i++
		case s[i] == q:
			return i + 1, nil
		}
	}
	return 0, fmt.Errorf("unterminated string at %d", start)
}

func isPromIdent(c byte, inside bool) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || inside && c >= '0' && c <= '9'
}

func TestDeployPromQLSelectors(t *testing.T) {
	tests := []struct {
		expr, want string // want: metric[label,...] space-separated, or "error"
	}{
		{`up{job="go-pusher"} == 0`, "up[job]"},
		{`sum by (le) (rate(h_bucket{job=~"x", le!="+Inf"}[5m]))`, "h_bucket[job,le]"},
		{`sum(rate(a_total[5m])) by (code) / ignoring (code) group_left sum(rate(b_total[5m]))`, "a_total b_total"},
		{`histogram_quantile(0.99, sum without (instance) (rate(h_bucket[$__rate_interval])))`, "h_bucket"},
		{`a / on(instance) group_left(version) b offset 5m`, "a b"},
		{`a unless ignoring (code) b offset -1h30m`, "a b"},
		{`label_replace(up{job="a"}, "dst", "$1", "src", "(.*)")`, "up[job]"},
		{`count_values("le", x) > bool 1e-3`, "x"},
		{`topk(5, x) or vector(0) + time()`, "x"},
		{`x{a="}{\"", b='it\'s', c=~` + "`a|b`" + `}`, "x[a,b,c]"},
		{`{__name__="x", job="y"}`, "x[job]"},
		{`{"utf8.name", job="y"}`, "utf8.name[job]"},
		{`rate(x[5m:30s] @ start()) + y @ 1609746000`, "x y"},
		{`SUM BY (le) (x) AND Inf`, "x"},
		{"# a comment: not_a_metric\ny", "y"},
		{`x{instance=~"$instance"}[${__range}]`, "x[instance]"},
		{`absent_over_time(x[1h]) or on() vector(0x1F)`, "x"},
		{`count (x) > 2 * NaN`, "x"},
		{`{__name__=~"pusher_.*"}`, "error"},
		{`{job="a"}`, "error"},
		{`x{job="a"`, "error"},
		{`x{job=a}`, "error"},
		{`"unterminated`, "error"},
		{`sum by (le (x)`, "error"},
		{`rate(x[5m)`, "error"},
	}
	for _, tt := range tests {
		sels, err := promqlSelectors(tt.expr)
		var got []string
		for _, s := range sels {
			if len(s.labels) == 0 {
				got = append(got, s.metric)
			} else {
				got = append(got, s.metric+"["+strings.Join(s.labels, ",")+"]")
			}
		}
		gotStr := strings.Join(got, " ")
		if err != nil {
			gotStr = "error"
		}
		if gotStr != tt.want {
			t.Errorf("promqlSelectors(%q) = %q (err %v), want %q", tt.expr, gotStr, err, tt.want)
		}
	}
}
