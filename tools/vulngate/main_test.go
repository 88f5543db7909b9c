package main

import (
	"bytes"
	"strings"
	"testing"
)

const stream = `{"config":{"protocol_version":"v1.0.0"}}
{"finding":{"osv":"GO-1","fixed_version":"v1.26.9","trace":[{"module":"stdlib","version":"v1.26.8","package":"net/http","function":"Get"}]}}
{"finding":{"osv":"GO-2","fixed_version":"v0.2.0","trace":[{"module":"example.com/m","version":"v0.1.0","package":"example.com/m"}]}}
`

func TestJudge(t *testing.T) {
	var out bytes.Buffer
	if failed, err := judge(strings.NewReader(stream), map[string]string{"GO-1": "needs a newer Go"}, &out); err != nil || failed {
		t.Fatalf("allowed stdlib finding, module imported only: failed %v %v\n%s", failed, err, out.String())
	}
	out.Reset()
	if failed, _ := judge(strings.NewReader(stream), nil, &out); !failed || !strings.Contains(out.String(), "CALLED    GO-1 stdlib@v1.26.8") {
		t.Fatalf("called stdlib finding without an allow: %s", out.String())
	}
	called := stream + `{"finding":{"osv":"GO-2","fixed_version":"v0.2.0","trace":[{"module":"example.com/m","version":"v0.1.0","package":"example.com/m","function":"F"}]}}` + "\n"
	out.Reset()
	if failed, _ := judge(strings.NewReader(called), map[string]string{"GO-1": "x", "GO-2": "x"}, &out); !failed {
		t.Fatalf("a called module vulnerability is never allowed: %s", out.String())
	}
}
