//! fractals: steward's demo application, a Rust re-imagining of the OpenStack
//! First App's fractal generator.
//!
//! - `fractals api --listen ADDR`: create, list and fetch fractal jobs, an HTML
//!   gallery, `/health` (IETF health+json) and `/metrics` (Prometheus text, with
//!   the queue depth an autoscaler would scale workers on);
//! - `fractals worker [--listen ADDR]`: takes jobs from the queue and renders
//!   Mandelbrot or Julia PNGs (CPU-bound); with `--listen` it answers `/health`
//!   and `/metrics` too.
//!
//! Jobs live in an SQLite database and the images in an object store
//! directory, both under `--data` (shared by every instance). By default the
//! database is also the queue: workers poll it, and a job a worker took but did
//! not finish within a minute (the worker was replaced) is taken again by
//! another. With `--amqp URL` (RabbitMQ), the API publishes each new job's id to
//! the durable queue `fractal-jobs` and workers consume it with manual
//! acknowledgements: a job whose worker dies unacknowledged is redelivered.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use steward_health_endpoint::{HealthEndpoint, Observation};
use steward_objects::{LocalStore, ObjectStore};

#[derive(Parser)]
#[command(version, about = "fractals: steward's demo application")]
struct Cli {
    /// Where the job queue and the images live (shared by every instance).
    #[arg(
        long,
        env = "FRACTALS_DATA",
        default_value = "fractals-data",
        global = true
    )]
    data: PathBuf,
    /// Use this RabbitMQ (amqp://user:pass@host:port/vhost) as the job queue.
    #[arg(long, env = "FRACTALS_AMQP", global = true)]
    amqp: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and the gallery.
    Api {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Render queued fractals.
    Worker {
        /// Serve /health and /metrics here too.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// How often an idle worker looks for work, in milliseconds.
        #[arg(long, default_value_t = 200)]
        poll_ms: u64,
    },
}

/// A job as clients create it.
#[derive(Debug, Deserialize)]
struct NewJob {
    #[serde(default = "default_kind")]
    kind: String,
    #[serde(default = "default_size")]
    width: u32,
    #[serde(default = "default_size")]
    height: u32,
    #[serde(default = "default_iterations")]
    iterations: u32,
    /// Julia constant (real, imaginary).
    #[serde(default)]
    c: Option<(f64, f64)>,
}

fn default_kind() -> String {
    "mandelbrot".into()
}
fn default_size() -> u32 {
    256
}
fn default_iterations() -> u32 {
    256
}

#[derive(Debug, Serialize)]
struct Job {
    id: String,
    kind: String,
    width: u32,
    height: u32,
    iterations: u32,
    status: String,
    created_ms: i64,
    finished_ms: Option<i64>,
    worker: Option<String>,
    render_ms: Option<i64>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn open(data: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(data.join("fractals.db"))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS job (
            id TEXT PRIMARY KEY, kind TEXT NOT NULL, width INTEGER NOT NULL,
            height INTEGER NOT NULL, iterations INTEGER NOT NULL,
            cre REAL, cim REAL, status TEXT NOT NULL, created_ms INTEGER NOT NULL,
            started_ms INTEGER, finished_ms INTEGER, worker TEXT, render_ms INTEGER);
         CREATE INDEX IF NOT EXISTS job_status ON job (status, created_ms);",
    )?;
    Ok(conn)
}

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        kind: r.get(1)?,
        width: r.get(2)?,
        height: r.get(3)?,
        iterations: r.get(4)?,
        status: r.get(5)?,
        created_ms: r.get(6)?,
        finished_ms: r.get(7)?,
        worker: r.get(8)?,
        render_ms: r.get(9)?,
    })
}

const JOB_COLS: &str =
    "id, kind, width, height, iterations, status, created_ms, finished_ms, worker, render_ms";

/// The RabbitMQ queue jobs go through with `--amqp`.
const AMQP_QUEUE: &str = "fractal-jobs";

/// Connection arguments from an AMQP URI; `%2f` in the vhost means `/`.
fn amqp_args(uri: &str) -> Result<amqprs::connection::OpenConnectionArguments, String> {
    let rest = uri
        .strip_prefix("amqp://")
        .ok_or("the AMQP URL must start with amqp://")?;
    let (auth, rest) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
    let (user, pass) = auth.split_once(':').unwrap_or((auth, ""));
    let (hostport, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| "bad AMQP port")?),
        None => (hostport, 5672),
    };
    let vhost = match vhost {
        "" | "%2f" | "%2F" => "/".to_string(),
        v => v.to_string(),
    };
    let mut args = amqprs::connection::OpenConnectionArguments::new(host, port, user, pass);
    args.virtual_host(&vhost);
    Ok(args.finish())
}

/// Opens a channel with the durable job queue declared.
async fn amqp_channel(
    uri: &str,
) -> Result<(amqprs::connection::Connection, amqprs::channel::Channel), String> {
    use amqprs::channel::QueueDeclareArguments;
    let conn = amqprs::connection::Connection::open(&amqp_args(uri)?)
        .await
        .map_err(|e| format!("RabbitMQ: {e}"))?;
    let ch = conn
        .open_channel(None)
        .await
        .map_err(|e| format!("RabbitMQ channel: {e}"))?;
    ch.queue_declare(QueueDeclareArguments::durable_client_named(AMQP_QUEUE))
        .await
        .map_err(|e| format!("declaring {AMQP_QUEUE}: {e}"))?;
    Ok((conn, ch))
}

struct App {
    data: PathBuf,
    /// With `--amqp`: the URL and the API's publishing channel (opened lazily,
    /// reopened after a failure).
    amqp: Option<String>,
    publisher:
        tokio::sync::Mutex<Option<(amqprs::connection::Connection, amqprs::channel::Channel)>>,
    images: LocalStore,
    requests: AtomicU64,
    errors: AtomicU64,
    rendered: AtomicU64,
    started: Instant,
    instance: String,
}

type Shared = Arc<App>;

fn queue_depth(data: &Path) -> rusqlite::Result<(i64, i64, i64)> {
    let conn = open(data)?;
    conn.query_row(
        "SELECT
            coalesce(sum(status = 'queued'), 0),
            coalesce(sum(status = 'running'), 0),
            coalesce(sum(status = 'done'), 0) FROM job",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

fn health(app: Shared) -> HealthEndpoint {
    let version = std::env::var("STEWARD_IMAGE").unwrap_or_else(|_| "dev".into());
    let db = app.clone();
    HealthEndpoint::builder()
        .service_id("fractals")
        .version(env!("CARGO_PKG_VERSION"))
        .release_id(version)
        .description(format!("fractals instance {}", app.instance))
        .check("sqlite:responseTime", "datastore", move || {
            let app = db.clone();
            async move {
                let t = Instant::now();
                let data = app.data.clone();
                match tokio::task::spawn_blocking(move || queue_depth(&data)).await {
                    Ok(Ok(_)) => {
                        Observation::pass().observed(t.elapsed().as_secs_f64() * 1000.0, "ms")
                    }
                    Ok(Err(e)) => Observation::fail(format!("job queue: {e}")),
                    Err(e) => Observation::fail(e.to_string()),
                }
            }
        })
        .liveness("uptime", {
            let app = app.clone();
            move || {
                let s = app.started.elapsed().as_secs_f64();
                async move { Observation::pass().observed(s, "s") }
            }
        })
        .build()
}

async fn metrics(State(app): State<Shared>) -> Response {
    let data = app.data.clone();
    let depth = tokio::task::spawn_blocking(move || queue_depth(&data)).await;
    let (queued, running, done) = match depth {
        Ok(Ok(d)) => d,
        _ => return (StatusCode::SERVICE_UNAVAILABLE, "queue unavailable\n").into_response(),
    };
    let body = format!(
        "# HELP fractals_http_requests_total Requests answered by this instance.\n\
         # TYPE fractals_http_requests_total counter\n\
         fractals_http_requests_total {}\n\
         # HELP fractals_http_errors_total Requests answered with a server error.\n\
         # TYPE fractals_http_errors_total counter\n\
         fractals_http_errors_total {}\n\
         # HELP fractals_queue_depth Jobs waiting for a worker.\n\
         # TYPE fractals_queue_depth gauge\n\
         fractals_queue_depth {queued}\n\
         # HELP fractals_jobs Jobs by status.\n\
         # TYPE fractals_jobs gauge\n\
         fractals_jobs{{status=\"queued\"}} {queued}\n\
         fractals_jobs{{status=\"running\"}} {running}\n\
         fractals_jobs{{status=\"done\"}} {done}\n\
         # HELP fractals_rendered_total Fractals this instance rendered.\n\
         # TYPE fractals_rendered_total counter\n\
         fractals_rendered_total {}\n",
        app.requests.load(Ordering::Relaxed),
        app.errors.load(Ordering::Relaxed),
        app.rendered.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

fn internal(app: &App, e: impl std::fmt::Display) -> Response {
    app.errors.fetch_add(1, Ordering::Relaxed);
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

async fn create(State(app): State<Shared>, Json(new): Json<NewJob>) -> Response {
    match enqueue(&app, new).await {
        Ok(id) => (
            StatusCode::CREATED,
            [(header::LOCATION, format!("/fractals/{id}"))],
            Json(serde_json::json!({"id": id, "status": "queued"})),
        )
            .into_response(),
        Err(r) => r,
    }
}

/// The gallery's form: one job of the kind chosen, then back to the gallery
/// (which shows it queued, then running, then done).
#[derive(Deserialize)]
struct NewJobForm {
    kind: String,
}

async fn create_from_form(
    State(app): State<Shared>,
    axum::Form(form): axum::Form<NewJobForm>,
) -> Response {
    let new = NewJob {
        kind: form.kind,
        width: default_size(),
        height: default_size(),
        iterations: default_iterations(),
        c: None,
    };
    match enqueue(&app, new).await {
        Ok(_) => (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response(),
        Err(r) => r,
    }
}

/// Queues a job: its id, or the response that says why not.
async fn enqueue(app: &Shared, new: NewJob) -> Result<String, Response> {
    app.requests.fetch_add(1, Ordering::Relaxed);
    if !matches!(new.kind.as_str(), "mandelbrot" | "julia") {
        return Err((
            StatusCode::BAD_REQUEST,
            "kind must be mandelbrot or julia\n",
        )
            .into_response());
    }
    if !(8..=4096).contains(&new.width)
        || !(8..=4096).contains(&new.height)
        || !(1..=100_000).contains(&new.iterations)
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "width and height are 8..4096, iterations 1..100000\n",
        )
            .into_response());
    }
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source");
    let id = hex::encode(b);
    let (cre, cim) = new.c.unwrap_or((-0.8, 0.156));
    let data = app.data.clone();
    let id2 = id.clone();
    let done =
        tokio::task::spawn_blocking(move || {
            open(&data)?.execute(
            "INSERT INTO job (id, kind, width, height, iterations, cre, cim, status, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8)",
            params![id2, new.kind, new.width, new.height, new.iterations, cre, cim, now_ms()],
        )
        })
        .await;
    if let (Ok(Ok(_)), Some(uri)) = (&done, &app.amqp)
        && let Err(e) = publish(app, uri, &id).await
    {
        // Not queued means not accepted: the job goes again.
        let data = app.data.clone();
        let id2 = id.clone();
        let _ = tokio::task::spawn_blocking(move || {
            open(&data)?.execute("DELETE FROM job WHERE id = ?1", params![id2])
        })
        .await;
        app.errors.fetch_add(1, Ordering::Relaxed);
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("job queue unavailable: {e}\n"),
        )
            .into_response());
    }
    match done {
        Ok(Ok(_)) => Ok(id),
        Ok(Err(e)) => Err(internal(app, e)),
        Err(e) => Err(internal(app, e)),
    }
}

async fn publish(app: &App, uri: &str, id: &str) -> Result<(), String> {
    use amqprs::BasicProperties;
    use amqprs::channel::BasicPublishArguments;
    let mut guard = app.publisher.lock().await;
    for attempt in 0..2 {
        if guard.is_none() {
            *guard = Some(amqp_channel(uri).await?);
        }
        let (_, ch) = guard.as_ref().expect("opened above");
        let sent = ch
            .basic_publish(
                BasicProperties::default().with_persistence(true).finish(),
                id.as_bytes().to_vec(),
                BasicPublishArguments::new("", AMQP_QUEUE),
            )
            .await;
        match sent {
            Ok(()) => return Ok(()),
            // A broken connection is reopened once.
            Err(e) if attempt == 0 => {
                eprintln!("fractals api: publishing: {e}; reconnecting");
                *guard = None;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    unreachable!("the loop returns")
}

async fn list(State(app): State<Shared>) -> Response {
    app.requests.fetch_add(1, Ordering::Relaxed);
    let data = app.data.clone();
    let jobs = tokio::task::spawn_blocking(move || -> rusqlite::Result<Vec<Job>> {
        let conn = open(&data)?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {JOB_COLS} FROM job ORDER BY created_ms DESC LIMIT 100"
        ))?;
        stmt.query_map([], job_row)?.collect()
    })
    .await;
    match jobs {
        Ok(Ok(jobs)) => Json(jobs).into_response(),
        Ok(Err(e)) => internal(&app, e),
        Err(e) => internal(&app, e),
    }
}

fn find(data: &Path, id: &str) -> rusqlite::Result<Option<Job>> {
    open(data)?
        .query_row(
            &format!("SELECT {JOB_COLS} FROM job WHERE id = ?1"),
            params![id],
            job_row,
        )
        .optional()
}

async fn get_job(State(app): State<Shared>, UrlPath(id): UrlPath<String>) -> Response {
    app.requests.fetch_add(1, Ordering::Relaxed);
    let data = app.data.clone();
    match tokio::task::spawn_blocking(move || find(&data, &id)).await {
        Ok(Ok(Some(j))) => Json(j).into_response(),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, "no such fractal\n").into_response(),
        Ok(Err(e)) => internal(&app, e),
        Err(e) => internal(&app, e),
    }
}

async fn image(State(app): State<Shared>, UrlPath(id): UrlPath<String>) -> Response {
    app.requests.fetch_add(1, Ordering::Relaxed);
    if !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return (StatusCode::NOT_FOUND, "no such fractal\n").into_response();
    }
    match app.images.get(&format!("{id}.png")) {
        Ok(png) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "not rendered (yet)\n").into_response(),
    }
}

async fn gallery(State(app): State<Shared>) -> Response {
    app.requests.fetch_add(1, Ordering::Relaxed);
    let data = app.data.clone();
    let jobs = tokio::task::spawn_blocking(move || -> rusqlite::Result<Vec<Job>> {
        let conn = open(&data)?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {JOB_COLS} FROM job ORDER BY created_ms DESC LIMIT 48"
        ))?;
        stmt.query_map([], job_row)?.collect()
    })
    .await;
    let Ok(Ok(jobs)) = jobs else {
        return internal(&app, "job queue unavailable");
    };
    let busy = jobs
        .iter()
        .any(|j| j.status != "done" && j.status != "failed");
    let now = now_ms();
    let mut html = String::from("<!doctype html><meta charset=utf-8><title>fractals</title>");
    if busy {
        // Queued or running jobs: look again in a moment.
        html.push_str("<meta http-equiv=refresh content=3>");
    }
    html.push_str(
        "<style>body{font-family:sans-serif;margin:2em;max-width:60em}\
         img{margin:4px;width:160px;vertical-align:top}\
         table{border-collapse:collapse;margin:1em 0}td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #eee}\
         .queued{color:#9a6700}.running{color:#0969da}.done{color:#1a7f37}.failed{color:#cf222e}</style>\
         <h1>fractals</h1>\
         <form method=post action=/new><label>New fractal: <select name=kind>\
         <option value=mandelbrot>Mandelbrot</option><option value=julia>Julia</option></select></label> \
         <button type=submit>Render</button></form>",
    );
    if jobs.is_empty() {
        html.push_str(
            "<p>No jobs yet: render one above (or POST /fractals {\"kind\":\"julia\"}).</p>",
        );
    } else {
        html.push_str(
            "<table id=jobs><thead><tr><th>Job</th><th>Kind</th><th>Status</th><th>Worker</th><th>Rendered in</th><th>Submitted</th></tr></thead><tbody>",
        );
        for j in &jobs {
            html.push_str(&format!(
                "<tr data-job=\"{id}\"><td><a href=\"/fractals/{id}\">{id}</a></td><td>{kind}</td><td class={status}>{status}</td><td>{worker}</td><td>{took}</td><td>{age} s ago</td></tr>",
                id = j.id,
                kind = j.kind,
                status = j.status,
                worker = j.worker.as_deref().unwrap_or(""),
                took = j.render_ms.map(|ms| format!("{ms} ms")).unwrap_or_default(),
                age = (now - j.created_ms).max(0) / 1000,
            ));
        }
        html.push_str("</tbody></table>");
    }
    for j in jobs.iter().filter(|j| j.status == "done") {
        html.push_str(&format!(
            "<a href=\"/fractals/{0}\"><img src=\"/fractals/{0}/image\" alt=\"{1} {0}\"></a>",
            j.id, j.kind
        ));
    }
    Html(html).into_response()
}

/// Renders a fractal as an 8-bit grayscale-ramp RGB PNG.
fn render(kind: &str, w: u32, h: u32, iterations: u32, c: (f64, f64)) -> Vec<u8> {
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let (px, py) = (
                (x as f64 / w as f64) * 3.5 - 2.5,
                (y as f64 / h as f64) * 2.0 - 1.0,
            );
            let (mut zr, mut zi, cr, ci) = if kind == "julia" {
                (px + 0.75, py, c.0, c.1)
            } else {
                (0.0, 0.0, px, py)
            };
            let mut n = 0;
            while n < iterations && zr * zr + zi * zi <= 4.0 {
                let t = zr * zr - zi * zi + cr;
                zi = 2.0 * zr * zi + ci;
                zr = t;
                n += 1;
            }
            let v = if n == iterations {
                0
            } else {
                (255 * n / iterations) as u8
            };
            pixels.extend_from_slice(&[v, v.saturating_mul(2), 255 - v]);
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().expect("a PNG header in memory");
        writer
            .write_image_data(&pixels)
            .expect("PNG data in memory");
    }
    out
}

/// A job a worker took: id, kind, width, height, iterations, Julia constant.
type Claimed = (String, String, u32, u32, u32, f64, f64);

fn claimed_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Claimed> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get::<_, Option<f64>>(5)?.unwrap_or(-0.8),
        r.get::<_, Option<f64>>(6)?.unwrap_or(0.156),
    ))
}

/// Takes the oldest queued job (or one abandoned by a replaced worker).
fn claim(conn: &Connection, worker: &str) -> rusqlite::Result<Option<Claimed>> {
    let now = now_ms();
    conn.query_row(
        "UPDATE job SET status = 'running', started_ms = ?1, worker = ?2
         WHERE id = (SELECT id FROM job
                     WHERE status = 'queued' OR (status = 'running' AND started_ms < ?1 - 60000)
                     ORDER BY created_ms LIMIT 1)
         RETURNING id, kind, width, height, iterations, cre, cim",
        params![now, worker],
        claimed_row,
    )
    .optional()
}

/// Renders job `id` if it is still to be done (a redelivered job may not be).
fn render_by_id(app: &App, id: &str) -> Result<(), String> {
    let conn = open(&app.data).map_err(|e| e.to_string())?;
    let now = now_ms();
    let job: Option<Claimed> = conn
        .query_row(
            "UPDATE job SET status = 'running', started_ms = ?2, worker = ?3
             WHERE id = ?1 AND status IN ('queued', 'running')
             RETURNING id, kind, width, height, iterations, cre, cim",
            params![id, now, app.instance],
            claimed_row,
        )
        .optional()
        .map_err(|e| e.to_string())?;
    match job {
        Some(j) => finish(app, j),
        None => Ok(()),
    }
}

/// Renders a claimed job, stores the PNG and marks the job done.
fn finish(app: &App, job: Claimed) -> Result<(), String> {
    let (id, kind, w, h, iterations, cre, cim) = job;
    let t = Instant::now();
    let png = render(&kind, w, h, iterations, (cre, cim));
    let took = t.elapsed().as_millis() as i64;
    if let Err(e) = app.images.put(&format!("{id}.png"), &[Bytes::from(png)]) {
        let _ = open(&app.data).and_then(|c| {
            c.execute(
                "UPDATE job SET status = 'queued' WHERE id = ?1",
                params![id],
            )
        });
        return Err(format!("storing {id}: {e}"));
    }
    open(&app.data)
        .and_then(|c| {
            c.execute(
                "UPDATE job SET status = 'done', finished_ms = ?2, render_ms = ?3 WHERE id = ?1",
                params![id, now_ms(), took],
            )
        })
        .map_err(|e| e.to_string())?;
    app.rendered.fetch_add(1, Ordering::Relaxed);
    println!(
        "fractals worker {}: rendered {kind} {id} ({w}x{h}) in {took} ms",
        app.instance
    );
    Ok(())
}

/// The worker with RabbitMQ: one unacknowledged job at a time; the ack follows
/// the stored result, so a worker that dies mid-job leaves it to another.
async fn work_amqp(app: Shared, uri: String) {
    use amqprs::channel::{BasicAckArguments, BasicConsumeArguments, BasicQosArguments};
    loop {
        let (conn, ch) = match amqp_channel(&uri).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("fractals worker: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let consumed = async {
            ch.basic_qos(BasicQosArguments::new(0, 1, false))
                .await
                .map_err(|e| e.to_string())?;
            let (_, mut rx) = ch
                .basic_consume_rx(BasicConsumeArguments::new(AMQP_QUEUE, &app.instance))
                .await
                .map_err(|e| e.to_string())?;
            while let Some(msg) = rx.recv().await {
                let (Some(deliver), Some(content)) = (msg.deliver, msg.content) else {
                    continue;
                };
                let id = String::from_utf8_lossy(&content).to_string();
                let a = app.clone();
                match tokio::task::spawn_blocking(move || render_by_id(&a, &id)).await {
                    Ok(Ok(())) => {
                        ch.basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    // Not acknowledged: RabbitMQ hands it out again once this channel goes.
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok::<(), String>(())
        }
        .await;
        if let Err(e) = consumed {
            eprintln!("fractals worker: {e}; reconnecting");
        }
        let _ = conn.close().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Set when the process is asked to stop: a worker takes no new job and
/// finishes the one in hand.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn work(app: Shared, poll: Duration) {
    while !STOPPING.load(Ordering::SeqCst) {
        let claimed = open(&app.data).and_then(|c| claim(&c, &app.instance));
        let job = match claimed {
            Ok(Some(j)) => j,
            Ok(None) => {
                std::thread::sleep(poll);
                continue;
            }
            Err(e) => {
                eprintln!("fractals worker: queue: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(e) = finish(&app, job) {
            eprintln!("fractals worker: {e}");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The SQLite worker's thread, joined at shutdown.
static WORK_THREAD: std::sync::Mutex<Option<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(None);

/// Waits for SIGTERM or Ctrl-C; then a worker finishes the job in hand
/// before the process ends (steward's `stop_timeout` bounds the wait).
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    STOPPING.store(true, Ordering::SeqCst);
    let worker = WORK_THREAD.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(t) = worker {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = std::fs::create_dir_all(cli.data.join("images")) {
        eprintln!("fractals: cannot create {}: {e}", cli.data.display());
        std::process::exit(2);
    }
    if let Err(e) = open(&cli.data) {
        eprintln!("fractals: job queue {}: {e}", cli.data.display());
        std::process::exit(2);
    }
    let app = Arc::new(App {
        images: LocalStore::new(cli.data.join("images")),
        data: cli.data.clone(),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        rendered: AtomicU64::new(0),
        amqp: cli.amqp.clone(),
        publisher: tokio::sync::Mutex::new(None),
        started: Instant::now(),
        instance: std::env::var("STEWARD_INSTANCE").unwrap_or_else(|_| "local".into()),
    });
    let (listen, router) = match cli.command {
        Command::Api { listen } => {
            let router = axum::Router::new()
                .route("/", get(gallery))
                .route("/fractals", get(list).post(create))
                .route("/new", axum::routing::post(create_from_form))
                .route("/fractals/{id}", get(get_job))
                .route("/fractals/{id}/image", get(image))
                .route("/metrics", get(metrics))
                .merge(health(app.clone()).router())
                .with_state(app.clone());
            (Some(listen), router)
        }
        Command::Worker { listen, poll_ms } => {
            let worker = app.clone();
            match cli.amqp.clone() {
                Some(uri) => {
                    tokio::spawn(work_amqp(worker, uri));
                }
                None => {
                    let t =
                        std::thread::spawn(move || work(worker, Duration::from_millis(poll_ms)));
                    *WORK_THREAD.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
                }
            }
            let router = axum::Router::new()
                .route("/metrics", get(metrics))
                .merge(health(app.clone()).router())
                .with_state(app.clone());
            (listen, router)
        }
    };
    match listen {
        Some(addr) => {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("fractals: cannot listen on {addr}: {e}");
                    std::process::exit(2);
                }
            };
            println!("fractals {} listening on http://{addr}", app.instance);
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown())
                .await;
        }
        None => shutdown().await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_a_png() {
        let png = super::render("mandelbrot", 32, 16, 50, (0.0, 0.0));
        assert_eq!(&png[1..4], b"PNG");
        let julia = super::render("julia", 32, 16, 50, (-0.8, 0.156));
        assert_ne!(png, julia);
    }
}
