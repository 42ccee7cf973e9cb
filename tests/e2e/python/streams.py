"""exec and port-forward with the official Python `kubernetes` client (v4.channel.k8s.io).
Run by tests/e2e/exec.rs with the admin kubeconfig, a running busybox pod's name and the port
its web server listens on; exits non-zero (with a traceback) on the first mismatch."""

import sys

from kubernetes import client, config
from kubernetes.stream import portforward, stream


def main(kubeconfig, pod, port):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()

    # exec: output, and the exit code from the Status on the error channel.
    resp = stream(core.connect_get_namespaced_pod_exec, pod, "default",
                  command=["sh", "-c", "echo out; echo err >&2; exit 7"],
                  stderr=True, stdin=False, stdout=True, tty=False,
                  _preload_content=False)
    resp.run_forever(timeout=30)
    assert resp.read_stdout() == "out\n"
    assert resp.read_stderr() == "err\n"
    assert resp.returncode == 7, resp.returncode

    out = stream(core.connect_get_namespaced_pod_exec, pod, "default",
                 command=["busybox", "seq", "1", "3"], stderr=True, stdin=False,
                 stdout=True, tty=False)
    assert out == "1\n2\n3\n", repr(out)

    # port-forward: one connection per port for the life of the WebSocket.
    pf = portforward(core.connect_get_namespaced_pod_portforward, pod, "default",
                     ports=str(port))
    sock = pf.socket(port)
    sock.setblocking(True)
    sock.sendall(b"GET /small HTTP/1.0\r\nHost: x\r\n\r\n")
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.") and data.endswith(b"\r\n\r\nsmall\n"), data
    assert pf.error(port) is None, pf.error(port)
    sock.close()
    print("all checks passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
