package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"
)

// target is where streams connect: host:port and the raw request bytes.
type target struct {
	addr    string
	request []byte
}

func newTarget(rawURL string, headers []string, extra string) (*target, error) {
	if !strings.HasPrefix(rawURL, "http://") {
		return nil, fmt.Errorf("need an http:// URL, got %q", rawURL)
	}
	rest := rawURL[len("http://"):]
	slash := strings.IndexByte(rest, '/')
	host, path := rest, "/"
	if slash >= 0 {
		host, path = rest[:slash], rest[slash:]
	}
	if !strings.Contains(host, ":") {
		host += ":80"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n", path, host)
	for _, h := range headers {
		b.WriteString(h)
		b.WriteString("\r\n")
	}
	if extra != "" {
		b.WriteString(extra)
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	return &target{addr: host, request: []byte(b.String())}, nil
}

// event is one dispatched SSE message, reduced to what the benchmark needs.
type event struct {
	id      int64 // -1 when the message had no id line
	name    string
	seq     int64 // -1 when data holds no seq
	sentNs  int64 // 0 when data holds no t
	comment bool  // a comment-only block (": ok"), counts as "first bytes"
}

// sseConn is one open stream: the socket and a line reader over the (de-chunked) body.
type sseConn struct {
	nc  net.Conn
	br  *bufio.Reader
	cur event
	any bool
}

var errStatus = errors.New("bad status")

// open dials, sends the request and reads the response head (status 200, SSE content type).
func (t *target) open(timeout time.Duration) (*sseConn, error) {
	nc, err := net.DialTimeout("tcp", t.addr, timeout)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetLinger(0) // close with RST: no TIME_WAIT pile-up on the generator side
	}
	nc.SetDeadline(time.Now().Add(timeout))
	if _, err := nc.Write(t.request); err != nil {
		nc.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(nc, 4096)
	status, err := br.ReadSlice('\n')
	if err != nil {
		nc.Close()
		return nil, err
	}
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 200")) && !bytes.HasPrefix(status, []byte("HTTP/1.0 200")) {
		nc.Close()
		return nil, fmt.Errorf("%w: %s", errStatus, strings.TrimSpace(string(status)))
	}
	chunked := false
	sse := false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			nc.Close()
			return nil, err
		}
		if len(bytes.TrimSpace(line)) == 0 {
			break
		}
		l := strings.ToLower(string(line))
		if strings.HasPrefix(l, "transfer-encoding:") && strings.Contains(l, "chunked") {
			chunked = true
		}
		if strings.HasPrefix(l, "content-type:") && strings.Contains(l, "text/event-stream") {
			sse = true
		}
	}
	if !sse {
		nc.Close()
		return nil, fmt.Errorf("%w: not text/event-stream", errStatus)
	}
	nc.SetDeadline(time.Time{})
	c := &sseConn{nc: nc, br: br}
	if chunked {
		c.br = bufio.NewReaderSize(httputil.NewChunkedReader(br), 4096)
	}
	c.cur = event{id: -1, seq: -1}
	return c, nil
}

// next reads until one message is complete and returns it.
func (c *sseConn) next() (event, error) {
	for {
		line, err := c.br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// a very long line: consume the rest of it (data beyond the buffer is ignored)
			for err == bufio.ErrBufferFull {
				_, err = c.br.ReadSlice('\n')
			}
		}
		if err != nil {
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			return event{}, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			if !c.any {
				continue
			}
			ev := c.cur
			c.cur = event{id: -1, seq: -1}
			c.any = false
			return ev, nil
		}
		c.any = true
		switch {
		case line[0] == ':':
			c.cur.comment = true
		case bytes.HasPrefix(line, []byte("data:")):
			d := line[5:]
			if v, ok := jsonInt(d, []byte(`"seq":`)); ok {
				c.cur.seq = v
			}
			if v, ok := jsonInt(d, []byte(`"t":`)); ok {
				c.cur.sentNs = v
			}
		case bytes.HasPrefix(line, []byte("id:")):
			v, err := strconv.ParseInt(string(bytes.TrimSpace(line[3:])), 10, 64)
			if err == nil {
				c.cur.id = v
			}
		case bytes.HasPrefix(line, []byte("event:")):
			c.cur.name = string(bytes.TrimSpace(line[6:]))
		}
	}
}

func (c *sseConn) close() { c.nc.Close() }

// jsonInt finds key (with its colon) anywhere in data and parses the integer after it.
func jsonInt(data, key []byte) (int64, bool) {
	i := bytes.Index(data, key)
	if i < 0 {
		return 0, false
	}
	j := i + len(key)
	for j < len(data) && data[j] == ' ' {
		j++
	}
	var v int64
	start := j
	for j < len(data) && data[j] >= '0' && data[j] <= '9' {
		v = v*10 + int64(data[j]-'0')
		j++
	}
	return v, j > start
}
