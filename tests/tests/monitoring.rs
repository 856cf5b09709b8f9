//! End-to-end test of the monitoring surfaces on a real PostgreSQL 15 cluster: `backup.stats()`
//! against the catalog and the repository, the `/metrics` endpoint scraped by a real
//! Prometheus and queried through its HTTP API, the postgres_exporter queries file run by a real
//! postgres_exporter, `/health` and `/stats`, and the status page rendered by headless Chromium
//! (its DOM and a screenshot).

use e2e::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

/// A plain HTTP/1.0 GET on a loopback port: (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// Prometheus's instant query API: the value of the first series, if any.
fn prom_query(port: u16, query: &str) -> Option<f64> {
    let q: String = query.bytes().map(|b| if b.is_ascii_alphanumeric() || b"_-.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
    let (status, body) = http_get(port, &format!("/api/v1/query?query={q}"));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"].as_array()?.first()?["value"][1].as_str()?.parse().ok()
}

#[test]
fn stats_metrics_and_status_page() {
    let http_port = free_port();
    let listen = format!("127.0.0.1:{http_port}");
    let (archiver, c) = extension_cluster("monitoring", &[("backup.http_listen", listen.as_str()), ("archive_timeout", "60s")]);
    c.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 50000) g");
    let first = c.psql("SELECT backup.start_full(wait => true)");
    c.psql("UPDATE t SET v = v || 'x' WHERE g % 10 = 0");
    let incr = c.psql("SELECT backup.start_incremental(wait => true)");
    let second = c.psql("SELECT backup.start_full(wait => true)");
    let last = c.switch_wal();
    c.wait_archived(&last, WAIT);

    // (a) backup.stats() agrees with the catalog and the repository (read while the
    // repository stands still: the same listing before and after).
    let (stats, objects) = (0..10)
        .find_map(|_| {
            let before = archiver.storage().objects("");
            let stats = sql_json(&c, "SELECT backup.stats()");
            (archiver.storage().objects("") == before).then_some((stats, before))
        })
        .expect("the repository stood still for one backup.stats()");
    let kind = |k: &str| stats["backups"].as_array().unwrap().iter().find(|r| r["kind"] == k).cloned().unwrap_or_else(|| panic!("no {k} in {stats:#}"));
    assert_eq!(kind("full")["completed"], 2, "{stats:#}");
    assert_eq!(kind("incremental")["completed"], 1, "{stats:#}");
    assert_eq!(kind("full")["success_rate"].as_f64(), Some(1.0), "{stats:#}");
    let catalog_stored: i64 = c.psql("SELECT sum(stored_bytes) FROM backup.backups WHERE type = 'full' AND status = 'completed'").parse().unwrap();
    assert_eq!(kind("full")["stored_bytes"].as_i64(), Some(catalog_stored), "{stats:#}");
    assert!(kind("full")["compression_ratio"].as_f64().unwrap() > 1.0, "{stats:#}");
    let today = stats["daily"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(today["completed"], 3, "{stats:#}");
    let repo = &stats["repositories"][0];
    assert_eq!(repo["name"], "local");
    assert_eq!(repo["stored_bytes"].as_u64(), Some(objects.iter().map(|o| o.size).sum::<u64>()), "{stats:#}");
    let wal_objects = objects.iter().filter(|o| o.key.starts_with("wal/") && !o.key.contains("/history/") && o.key.len() >= 4 + 17 + 24).count() as u64;
    assert!(repo["wal_files"].as_u64().unwrap() >= wal_objects, "{stats:#}");
    assert!(today["wal_files"].as_u64().unwrap() >= 3, "every WAL file was archived today: {stats:#}");
    assert!(stats["rpo"]["seconds"].as_f64().unwrap() >= 0.0 && stats["rpo"]["bound_seconds"] == 60, "{stats:#}");
    assert!(stats["rto"]["seconds"].is_null() && stats["rto"]["reason"].as_str().unwrap().contains("restore test"), "{stats:#}");
    let daily_rows = c.psql("SELECT count(*) FROM backup.stats_daily('7 days')");
    assert!(daily_rows == "8" || daily_rows == "7", "{daily_rows}");

    // (b) The endpoints.
    wait_until("the http worker listening", WAIT, || TcpStream::connect(("127.0.0.1", http_port)).is_ok());
    let (status, metrics) = http_get(http_port, "/metrics");
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("pg_backup_backups{kind=\"full\",status=\"completed\"} 2"), "{metrics}");
    assert!(metrics.contains("# TYPE pg_backup_wal_archived_total counter"), "{metrics}");
    let (status, health) = http_get(http_port, "/health");
    let checks: Value = serde_json::from_str(&health).unwrap_or_else(|e| panic!("{e}: {health}"));
    assert_eq!(checks[0]["name"], "overall", "{health}");
    assert_eq!(status, if checks[0]["status"] == "critical" { 503 } else { 200 }, "{health}");
    assert_eq!(http_get(http_port, "/stats").0, 200);
    assert_eq!(http_get(http_port, "/nothing").0, 404);

    // (c) A real Prometheus scrapes it; its queries return the catalog's figures.
    let dir = TestDir::new("monitoring-prometheus");
    let prom_port = free_port();
    let config = dir.write(
        "prometheus.yml",
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pg_backup\n    static_configs:\n      - targets: ['127.0.0.1:{http_port}']\n"),
    );
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"));
    let _prometheus = Background::spawn(cmd, &dir.join("prometheus.log"));
    // Prometheus answers 503 until its storage is open: /-/ready says when it is.
    wait_until("Prometheus ready", WAIT, || TcpStream::connect(("127.0.0.1", prom_port)).is_ok() && http_get(prom_port, "/-/ready").0 == 200);
    wait_until("Prometheus to scrape the full backups", WAIT, || prom_query(prom_port, "pg_backup_backups{kind=\"full\",status=\"completed\"}") == Some(2.0));
    assert_eq!(prom_query(prom_port, "pg_backup_backups{kind=\"incremental\",status=\"completed\"}"), Some(1.0));
    assert_eq!(prom_query(prom_port, "pg_backup_health_status{check=\"archiving\"}"), Some(0.0));
    let last_full: f64 = c.psql("SELECT extract(epoch FROM stop_time) FROM backup.backups WHERE id = (SELECT max(id) FROM backup.backups WHERE type = 'full')").parse().unwrap();
    let scraped = prom_query(prom_port, "pg_backup_last_success_timestamp_seconds{kind=\"full\"}").expect("last full backup time scraped");
    assert!((scraped - last_full).abs() < 1.0, "scraped {scraped}, catalog {last_full}");

    // (d) postgres_exporter with the queries file we ship reports the same figures.
    let queries = dir.write("queries.yaml", std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/monitoring/postgres_exporter-queries.yaml")).unwrap());
    give_to_postgres(&queries);
    let exporter_port = free_port();
    let mut cmd = postgres_command("prometheus-postgres-exporter");
    cmd.env("DATA_SOURCE_NAME", format!("{} sslmode=disable", c.conninfo()))
        .arg(format!("--web.listen-address=127.0.0.1:{exporter_port}"))
        .arg(format!("--extend.query-path={}", queries.display()));
    let exporter = Background::spawn(cmd, &dir.join("exporter.log"));
    let sample = |text: &str, name: &str, labels: &[&str]| -> Option<f64> {
        text.lines()
            .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])) && labels.iter().all(|lb| l.contains(lb)))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let mut exported = String::new();
    wait_until("postgres_exporter to run our queries", WAIT, || {
        TcpStream::connect(("127.0.0.1", exporter_port)).is_ok() && {
            exported = http_get(exporter_port, "/metrics").1;
            exported.contains("pg_backup_backups{")
        }
    });
    assert_eq!(sample(&exported, "pg_backup_backups", &["kind=\"full\"", "status=\"completed\""]), Some(2.0), "{exported}\n{}", std::fs::read_to_string(&exporter.log).unwrap_or_default());
    assert_eq!(sample(&exported, "pg_backup_health_status", &["check=\"archiving\""]), Some(0.0), "{exported}");
    assert!(sample(&exported, "pg_backup_last_success_timestamp_seconds", &["kind=\"full\""]).is_some_and(|t| (t - last_full).abs() < 1.0), "{exported}");
    assert!(sample(&exported, "pg_backup_rpo_seconds", &[]).is_some(), "{exported}");
    drop(exporter);

    // (e) The status page in a real browser: the rendered DOM shows the backups, and the
    // screenshot is the size asked for and not blank.
    let url = format!("http://127.0.0.1:{http_port}/");
    let dom = Command::new("chromium").args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", &url]).output().expect("run chromium (make test-deps installs it)");
    let dom = String::from_utf8_lossy(&dom.stdout);
    for id in [&first, &incr, &second] {
        assert!(dom.contains(id.as_str()), "the status page shows {id}:\n{dom}");
    }
    assert!(dom.contains("<svg"), "the chart is drawn");
    let shot = dir.join("status.png");
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", &format!("--screenshot={}", shot.display()), "--window-size=1280,900", &url])
        .output()
        .expect("run chromium");
    assert!(shot.exists(), "chromium wrote no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let (w, h) = (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()));
    assert_eq!((w, h), (1280, 900));
    assert!(png.len() > 30_000, "a page with tables and a chart compresses to more than a blank one: {} bytes", png.len());
    if let Some(keep) = std::env::var_os("STATUS_PAGE_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}
