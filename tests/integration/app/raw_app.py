#!/usr/bin/env python3
"""A bare HTTP/1.1 app for the enclave's header, upload and limit tests,
where the Node app is too polite: it shows the request head byte for byte
and can misbehave on purpose.

  raw_app.py PORT          serves, one thread per connection:
    GET  /echo              200, the request head exactly as received
    GET  /bighead?n=N       200 with a response head of about N bytes
    POST /upload            reads the Content-Length body, 200 "got N bytes"
  raw_app.py PORT noread    accepts connections and never reads from them
                            (an app too slow to take request bodies)
"""
import socket
import sys
import threading
import time

port = int(sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else "serve"
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(4096)
print(f"raw_app: listening on 127.0.0.1:{port} ({mode})", flush=True)


def respond(conn, status, body, extra=b""):
    conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n" % (status, len(body), extra) + body)


def serve(conn):
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            head += b"\r\n\r\n"
            target = head.split(b" ", 2)[1]
            if target == b"/echo":
                respond(conn, 200, head)
            elif target.startswith(b"/bighead?n="):
                n = int(target.split(b"=", 1)[1])
                pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 990) for i in range(n // 1000))
                respond(conn, 200, b"ok\n", pad)
            elif target == b"/upload":
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:length], buf[length:]
                respond(conn, 200, b"got %d bytes\n" % len(body))
            else:
                respond(conn, 404, b"not found\n")
    except OSError:
        pass
    finally:
        conn.close()


held = []
while True:
    conn, _ = srv.accept()
    if mode == "noread":
        held.append(conn)  # never read, never answered: the enclave's side fills up
    else:
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
