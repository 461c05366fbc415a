//! `bottle doctor`: what this machine can do, one line per fact, each with
//! what to do when it is missing. Exit 0 when `bottle run` will work as
//! invoked (with the same `--allow-unpatched-engine` setting), 3 when the
//! environment stops it. Reads only: it creates nothing on the engine.

use std::path::Path;

use super::CliResult;
use super::common::{RegistryOpt, print_result};
use crate::engine::{self, EngineVersion, MIN_ISOLATED_GATEWAY, MIN_PATCHED};
use crate::netpool::Pool;
use crate::runner::capacity::{self, Capacity};

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Judge `run` as if it were given --allow-unpatched-engine.
    #[arg(long, env = "BOTTLE_ALLOW_UNPATCHED_ENGINE", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    pub allow_unpatched_engine: bool,
    /// The address range `run` takes its networks' subnets from (as for `bottle run`)
    #[arg(long, env = "BOTTLE_SUBNET_POOL", value_name = "CIDR", value_parser = parse_pool)]
    pub subnet_pool: Option<Pool>,
    #[command(flatten)]
    pub registry: RegistryOpt,
}

fn parse_pool(s: &str) -> Result<Pool, String> {
    Pool::parse(s).map_err(|e| e.to_string())
}

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize)]
struct Fact {
    name: &'static str,
    ok: bool,
    detail: String,
    /// What to do when it is not ok (or a caveat when it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn fact(name: &'static str, ok: bool, detail: String, fix: Option<String>) -> Fact {
    Fact {
        name,
        ok,
        detail,
        fix,
    }
}

fn ver((a, b, c): (u32, u32, u32)) -> String {
    format!("{a}.{b}.{c}")
}

pub(super) async fn exec(args: Args) -> CliResult {
    let mut facts = Vec::new();
    let pool = args.subnet_pool.unwrap_or_else(Pool::default_pool);
    let engine_ready = engine_facts(&mut facts, args.allow_unpatched_engine, pool).await;
    facts.push(registry_fact(args.registry.get().as_deref()).await);
    let cache = crate::lock::fetch::default_cache_root();
    facts.push(fact(
        "store",
        true,
        format!("images are stored in {}", cache.join("oci").display()),
        Some("set BOTTLE_CACHE_DIR to move it".into()),
    ));
    facts.push(disk_fact(&cache));
    if args.json {
        let v = serde_json::json!({ "run_ready": engine_ready, "facts": facts });
        print_result(&v.to_string())?;
    } else {
        for f in &facts {
            // Only the engine and the DNS fix decide whether `run` works;
            // the rest are warnings.
            let blocking = matches!(f.name, "engine" | "dns-fix") && !engine_ready;
            let mark = match (f.ok, blocking) {
                (true, _) => "ok  ",
                (false, true) => "MISS",
                (false, false) => "warn",
            };
            let mut line = format!("{mark} {:<10} {}", f.name, f.detail);
            if let Some(fix) = &f.fix {
                line.push_str(&format!("\n     {:<10} → {fix}", ""));
            }
            print_result(&line)?;
        }
        print_result(if engine_ready {
            "bottle run will work on this machine"
        } else {
            "bottle run will NOT work on this machine as invoked: see the MISS lines"
        })?;
    }
    Ok(if engine_ready { 0 } else { 3 })
}

/// Engine, API, DNS fix, gateway isolation, user namespaces. Returns whether
/// `run` will work.
async fn engine_facts(facts: &mut Vec<Fact>, allow_unpatched: bool, pool: Pool) -> bool {
    let docker = match engine::connect().await {
        Ok(d) => d,
        Err(e) => {
            facts.push(fact("engine", false, e.to_string(), Some(
                "install Docker (Debian: `apt-get install docker.io`), start it, and make its socket readable by you (or set DOCKER_HOST)".into(),
            )));
            return false;
        }
    };
    let version = match engine::version(&docker).await {
        Ok(v) => v,
        Err(e) => {
            facts.push(fact(
                "engine",
                false,
                e.to_string(),
                Some("start Docker".into()),
            ));
            return false;
        }
    };
    facts.push(fact(
        "engine",
        true,
        format!(
            "Docker Engine {} (API {})",
            version.raw,
            docker.client_version()
        ),
        None,
    ));
    let (dns, run_ok) = dns_fact(&version, allow_unpatched);
    facts.push(dns);
    facts.push(gateway_fact(&version));
    facts.push(userns_fact(&docker).await);
    facts.push(capacity_fact(&docker, pool).await);
    run_ok
}

/// How many more bottles fit: addresses, memory, tasks (as `run`'s
/// admission judges them).
async fn capacity_fact(docker: &bollard::Docker, pool: Pool) -> Fact {
    let total = engine::info(docker).await.ok().and_then(|i| i.memory_total);
    let c = match capacity::survey(docker, pool, total).await {
        Ok(c) => c,
        Err(e) => return fact("capacity", false, e.to_string(), None),
    };
    let room = c.free_subnets / 2;
    let detail = capacity_detail(&c, room);
    let mut fix = None;
    if room == 0 {
        fix = Some(format!(
            "no room for another bottle in pool {pool}: `bottle gc` removes stale ones; or set BOTTLE_SUBNET_POOL to a larger or unused private range"
        ));
    } else if let Some(e) = pool.engine_overlaps().first() {
        fix = Some(format!(
            "pool {pool} overlaps the engine's default pool {e}: bottles then compete with compose projects for addresses"
        ));
    }
    fact("capacity", room > 0, detail, fix)
}

fn capacity_detail(c: &Capacity, room: u32) -> String {
    let mut parts = vec![
        format!("{} bottles exist", c.running),
        format!(
            "pool {}: {} of {} subnets free (room for {room} more bottles)",
            c.pool, c.free_subnets, c.pool_slots
        ),
    ];
    match (c.memory_available_mib, c.memory_total_mib) {
        (Some(a), Some(t)) => parts.push(format!("{a} of {t} MiB memory available")),
        (None, Some(t)) => parts.push(format!("{t} MiB memory on the engine's host")),
        _ => {}
    }
    if let (Some(t), Some(m)) = (c.tasks, c.task_max) {
        parts.push(format!("{t} of at most {m} tasks"));
    }
    parts.join("; ")
}

fn dns_fact(v: &EngineVersion, allow_unpatched: bool) -> (Fact, bool) {
    if v.patched() {
        let f = fact(
            "dns-fix",
            true,
            format!(
                "CVE-2024-29018 is fixed in this engine (≥ {})",
                ver(MIN_PATCHED)
            ),
            None,
        );
        return (f, true);
    }
    let detail = format!(
        "engine {} predates the CVE-2024-29018 fix ({}): its internal networks forward DNS for outside names through the host",
        v.raw,
        ver(MIN_PATCHED)
    );
    let fix = if allow_unpatched {
        "--allow-unpatched-engine is set: `run` gives the agent a resolver that answers nothing for outside names; upgrade the engine to drop this"
    } else {
        "`bottle run` needs --allow-unpatched-engine (or BOTTLE_ALLOW_UNPATCHED_ENGINE=1) on this engine, which applies bottle's DNS mitigation; or upgrade Docker to 25.0.5 or later"
    };
    (
        fact("dns-fix", false, detail, Some(fix.into())),
        allow_unpatched,
    )
}

fn gateway_fact(v: &EngineVersion) -> Fact {
    if v.supports_isolated_gateway() {
        fact(
            "gateway",
            true,
            "internal networks get an isolated gateway (gateway_mode_ipv4=isolated)".into(),
            None,
        )
    } else {
        fact(
            "gateway",
            true,
            format!(
                "no isolated gateway mode before {}: bottle gives the internal bridge no IPv4 address instead (inhibit_ipv4), so the agent's gateway address belongs to nobody",
                ver(MIN_ISOLATED_GATEWAY)
            ),
            Some(format!(
                "upgrade Docker to {} or later for the engine's own isolation",
                ver(MIN_ISOLATED_GATEWAY)
            )),
        )
    }
}

async fn userns_fact(docker: &bollard::Docker) -> Fact {
    let opts = match docker.info().await {
        Ok(i) => i.security_options.unwrap_or_default(),
        Err(e) => {
            return fact(
                "userns",
                false,
                format!("cannot read the engine's info: {e}"),
                None,
            );
        }
    };
    let has = |n: &str| opts.iter().any(|o| o.contains(&format!("name={n}")));
    if has("userns") || has("rootless") {
        let how = if has("rootless") {
            "rootless engine"
        } else {
            "userns-remap"
        };
        fact(
            "userns",
            true,
            format!("containers run in a private user namespace ({how})"),
            None,
        )
    } else {
        fact(
            "userns",
            false,
            "containers share the host's user namespace: the agent's uid 1000 is the host's uid 1000".into(),
            Some("optional hardening: run dockerd with `userns-remap: default` in /etc/docker/daemon.json, or use rootless Docker".into()),
        )
    }
}

async fn registry_fact(registry: Option<&str>) -> Fact {
    let Some(r) = registry else {
        return fact(
            "registry",
            true,
            "none configured: `lock` keeps images in the local store and `run` loads them from there".into(),
            Some("to share images, set --registry HOST[:PORT] or BOTTLE_REGISTRY and use `bottle push`".into()),
        );
    };
    let probe = format!("sha256:{}", "0".repeat(64));
    let answer = match crate::registry::RegistryClient::new(r) {
        Ok(c) => c.manifest_exists("bottle/doctor", &probe).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(_) => fact("registry", true, format!("{r} answers"), None),
        Err(e) => fact(
            "registry",
            false,
            format!("{r}: {e}"),
            Some("start it, fix --registry/BOTTLE_REGISTRY, or unset it to work from the local store".into()),
        ),
    }
}

fn disk_fact(cache: &Path) -> Fact {
    // The cache may not exist yet; its nearest existing ancestor holds it.
    let existing = cache
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match free_bytes(existing) {
        Some(free) => {
            let mib = free / (1024 * 1024);
            let ok = mib >= 512;
            fact(
                "disk",
                ok,
                format!("{mib} MiB free for the cache ({})", existing.display()),
                (!ok).then(|| {
                    "free some space (`bottle gc`, or remove old entries under the cache), or set BOTTLE_CACHE_DIR to a larger disk".into()
                }),
            )
        }
        None => fact(
            "disk",
            false,
            format!("cannot read free space of {}", existing.display()),
            None,
        ),
    }
}

fn free_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}
