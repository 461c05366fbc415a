//! The sandbox itself, against the real engine and a real registry: the
//! allowlisted test host answers through the sidecar, another host is
//! denied (and the summary says so), a direct connection to the test host
//! fails, the default route leads nowhere, the host is unreachable through
//! the gateway, names outside the bottle do not resolve, and nothing is
//! left behind.

mod common;
mod run_common;

use std::net::TcpListener;
use std::time::Duration;

use run_common::{Cleanup, fixture, leftovers, start_upstream};

#[tokio::test(flavor = "multi_thread")]
async fn only_the_sidecar_leads_out_and_only_to_allowed_hosts() {
    let agent = "sandboxnet";
    let Some(fx) = fixture(agent, &["upstream.bottle.test", "other.bottle.test"]).await else {
        return;
    };
    let mut cleanup = Cleanup {
        agent: agent.into(),
        extra_containers: vec![],
        extra_networks: vec![],
    };
    // The default builtin sidecar: loaded into the engine from this very
    // binary by `egress`, no registry involved.
    let (net, upstream, upstream_ip) = start_upstream(&fx.docker, &fx, "sandbox").await;
    cleanup.extra_containers.push(upstream.clone());
    cleanup.extra_networks.push(net.clone());

    // A listener on every host address: the bottle must not reach it.
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();

    // The host's own primary address (a UDP "connect" sends nothing; it
    // only picks the route's source address).
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe.connect("192.0.2.1:9").unwrap();
    let host_ip = probe.local_addr().unwrap().ip().to_string();

    // A name the machine's own configuration (package sources, resolver
    // search domain) says it resolves; the bottle must not resolve it.
    let Some(outside) = run_common::host_resolvable_name() else {
        panic!("this machine names no host in its package sources or resolv.conf search line");
    };
    let host_resolves = std::net::ToSocketAddrs::to_socket_addrs(&(outside.as_str(), 80)).is_ok();

    let script = format!(
        r#"
sc=$(nslookup "$SIDECAR" 2>/dev/null | awk '/^Address/ {{a=$NF}} END {{print a}}')
echo "sidecar-ip=$sc"
(printf 'GET http://upstream.bottle.test/hello.txt HTTP/1.0\r\nHost: upstream.bottle.test\r\n\r\n'; sleep 2) | nc -w 5 "$sc" 8888 | tr -d '\r' | sed 's/^/allowed: /'
(printf 'GET http://denied.bottle.test/hello.txt HTTP/1.0\r\nHost: denied.bottle.test\r\n\r\n'; sleep 2) | nc -w 5 "$sc" 8888 | head -1 | tr -d '\r' | sed 's/^/denied: /'
if nc -w 3 {upstream_ip} 80 </dev/null; then echo direct=open; else echo direct=closed; fi
ip route | sed 's/^/route: /'
gw=$(ip route | awk '/^default/ {{print $3}}')
[ -z "$gw" ] && gw=$(ip route | awk '/src/ {{split($1,a,"/"); split(a[1],o,"."); print o[1]"."o[2]"."o[3]".1"}}')
echo "gateway=$gw"
if nc -w 3 "$gw" {host_port} </dev/null; then echo gw-host=open; else echo gw-host=closed; fi
if nc -w 3 172.17.0.1 {host_port} </dev/null; then echo docker0-host=open; else echo docker0-host=closed; fi
if nc -w 3 {host_ip} {host_port} </dev/null; then echo hostip-host=open; else echo hostip-host=closed; fi
if nslookup {outside} >/dev/null 2>&1; then echo outside=resolved; else echo outside=unresolved; fi
if nslookup "$SIDECAR" >/dev/null 2>&1; then echo inside=resolved; else echo inside=unresolved; fi
"#
    );
    let sidecar_name_env = "SIDECAR";
    // The sidecar's name is only known from the plan: the agent finds it in
    // its own proxy variable instead.
    let script = format!(
        "{sidecar_name_env}=$(echo \"$HTTP_PROXY\" | sed 's#http://##; s#:.*##'); {script}"
    );
    let out = fx.bottle(
        &[
            "run",
            "--yes",
            "--egress-network",
            &net,
            "--trust-host",
            "upstream.bottle.test",
            agent,
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[],
    );
    let o = &out.stdout;
    assert_eq!(out.code, 0, "stdout:\n{o}\nstderr:\n{}", out.stderr);
    assert!(
        o.contains("allowed: HTTP/1.0 200") || o.contains("allowed: HTTP/1.1 200"),
        "{o}\n{}",
        out.stderr
    );
    assert!(o.contains("allowed: hello-from-upstream"), "{o}");
    assert!(
        o.contains("denied: HTTP/1.1 403") || o.contains("denied: HTTP/1.0 403"),
        "{o}"
    );
    assert!(o.contains("direct=closed"), "{o}");
    assert!(o.contains("gw-host=closed"), "{o}");
    assert!(o.contains("docker0-host=closed"), "{o}");
    assert!(o.contains("hostip-host=closed"), "{o}");
    assert!(
        o.contains("outside=unresolved"),
        "{outside} resolved inside: {o}"
    );
    // Only meaningful when the host itself resolves the name.
    assert!(
        host_resolves,
        "the host does not resolve {outside}, so the check proves nothing"
    );
    assert!(
        o.contains("inside=resolved"),
        "the sidecar's name must resolve: {o}"
    );
    // The host listener never saw a connection.
    assert!(
        listener.accept().is_err(),
        "a connection reached the host listener"
    );
    // The summary names the denied host.
    assert!(
        out.stderr
            .contains("sidecar blocked 1 request to 1 host: denied.bottle.test"),
        "{}",
        out.stderr
    );
    // No usable default route: either none at all, or one whose gateway
    // address belongs to nobody (engines < 28 always install one; bottle
    // takes the bridge's address away with inhibit_ipv4).
    let default_routes: Vec<&str> = o
        .lines()
        .filter(|l| l.starts_with("route: default"))
        .collect();
    if !default_routes.is_empty() {
        assert!(o.contains("gw-host=closed"), "{o}");
    }

    let left = leftovers(&fx.docker, agent).await;
    assert!(
        left.iter()
            .all(|l| l.contains("upstream") || l.contains(&net)),
        "leftovers: {left:?}"
    );
    drop(cleanup);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
