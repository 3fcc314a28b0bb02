// Command go-http is the Go side of bench/peers/http_compare.sh: a net/http
// server that answers "Hello, World!" to GET /, as examples/hello_http does
// (same body, Content-Type and Date headers, keep-alive).
//
// Usage: go-http [ADDR]   (default 127.0.0.1:8081; GOMAXPROCS sets the Ps)
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

func main() {
	addr := "127.0.0.1:8081"
	if len(os.Args) > 2 {
		fmt.Fprintln(os.Stderr, "usage: go-http [ADDR]")
		os.Exit(2)
	}
	if len(os.Args) == 2 {
		addr = os.Args[1]
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "Hello, World!")
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-http: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("go-http: listening on http://%s/\n", ln.Addr())
	if err := http.Serve(ln, nil); err != nil {
		fmt.Fprintf(os.Stderr, "go-http: %v\n", err)
		os.Exit(1)
	}
}
