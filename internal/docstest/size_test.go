package docstest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"strings"
	"testing"
)

// Size limits of production code (docs/design.md#the-stages): a function a
// reader can hold at once, a file of one concern. A change that crosses
// them is a prompt to cut along the code's own seams, as the spool, relay,
// ingest and server were cut.
const (
	maxFuncLines = 80
	maxFileLines = 600
)

// TestCodeSizeLimits: no production function over maxFuncLines lines and no
// production file over maxFileLines (tests and the vendored third_party
// tree aside).
func TestCodeSizeLimits(t *testing.T) {
	fset := token.NewFileSet()
	walkRepo(t, []string{".go"}, func(rel string, src []byte) {
		if strings.HasSuffix(rel, "_test.go") || strings.HasPrefix(rel, "third_party/") {
			return
		}
		f, err := parser.ParseFile(fset, rel, src, 0)
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return
		}
		if n := fset.File(f.Pos()).LineCount(); n > maxFileLines {
			t.Errorf("%s: %d lines, more than %d", rel, n, maxFileLines)
		}
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			if n := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line; n > maxFuncLines {
				t.Errorf("%s: func %s is %d lines, more than %d", rel, fd.Name.Name, n, maxFuncLines)
			}
		}
	})
}
