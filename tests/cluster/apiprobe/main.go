// apiprobe runs in a pod of the test node cluster. At start it asks the API server for /version
// through the `kubernetes` Service (ClusterIP, kube-proxy's rules), with the pod's service
// account token and the cluster CA that kube-root-ca.crt publishes, and logs the outcome; then it
// serves HTTP on :8080: /healthz (readiness) and /apiserver (the same check, made again now).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// checkAPIServer returns one line: the URL asked, the HTTP status and the body's start.
func checkAPIServer() string {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	url := "https://" + net.JoinHostPort(host, port) + "/version"
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		return fmt.Sprintf("apiserver url=%s error=%q", url, err.Error())
	}
	pem, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		return fmt.Sprintf("apiserver url=%s error=%q", url, err.Error())
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
	}
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Sprintf("apiserver url=%s error=%q", url, err.Error())
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	compact := strings.Join(strings.Fields(string(body)), " ")
	return fmt.Sprintf("apiserver url=%s status=%d body=%s", url, resp.StatusCode, compact)
}

func main() {
	log.SetFlags(0)
	log.SetOutput(os.Stdout)
	log.Printf("apiprobe starting, pod %s", os.Getenv("HOSTNAME"))
	log.Print(checkAPIServer())
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	http.HandleFunc("/apiserver", func(w http.ResponseWriter, _ *http.Request) {
		line := checkAPIServer()
		log.Print(line)
		io.WriteString(w, line+"\n")
	})
	log.Fatal(http.ListenAndServe(":8080", nil))
}
