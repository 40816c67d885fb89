//! A feed consumer (a marketplace adapter, a search indexer): subscribe to ATP changes,
//! print each one, and keep the position so that nothing is missed or seen twice. After a
//! disconnect or a `Lagged` notice it resumes after the last position; given `--after SEQ`
//! it starts after a position stored from an earlier run, and given `--name NAME` the
//! server stores the position (ACK) after every frame and `start = RESUME` continues from
//! it, across server restarts too.
//!
//! ```text
//! cargo run --example feed_consumer -- [--addr HOST:PORT] [--token TOKEN] [--channel CH]...
//!     [--after SEQ | --name NAME] [--until SEQ]
//! ```
//!
//! Without `--after` or `--name` it starts with a snapshot of current ATP, then live.
//! `--until SEQ` stops once every change up to SEQ was printed (scripts, tests); otherwise
//! it runs until killed. The last line is `position N`: pass N to `--after` next time.
//! `--addr` defaults to `$OMNISTOCK_ADDR`, else 127.0.0.1:7878; `--token` (an adapter or
//! admin role) to `$OMNISTOCK_TOKEN`. Exit status: 0, 1 on an error, 2 on bad arguments.
//! Only the client-side library is used. tests/examples.rs runs this against a real server.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use omnistock::client::{ClientConfig, ClientError, Subscriber};
use omnistock::protocol::{kinds, start, PushItem, Subscribe};

/// Resume attempts in a row before giving up (a server down for longer is an error).
const MAX_RESUMES: u32 = 20;
/// Wait between two resume attempts.
const RESUME_WAIT: Duration = Duration::from_millis(500);

/// What to consume, from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `host:port` of the server.
    pub addr: String,
    /// Auth token; empty for a server without tokens.
    pub token: String,
    /// Channels to follow (empty: all).
    pub channels: Vec<String>,
    /// Start after this position (`start = AFTER`).
    pub after: Option<u64>,
    /// A named subscription: positions stored on the server.
    pub name: Option<String>,
    /// Stop once the position reaches this.
    pub until: Option<u64>,
}

const USAGE: &str = "usage: feed_consumer [--addr HOST:PORT] [--token TOKEN] [--channel CH]... \
                     [--after SEQ | --name NAME] [--until SEQ]";

/// Parses the arguments (without the program name).
pub fn parse_args(
    args: impl IntoIterator<Item = String>,
    env_addr: Option<String>,
    env_token: Option<String>,
) -> Result<Options, String> {
    let mut o = Options {
        addr: env_addr.unwrap_or_else(|| "127.0.0.1:7878".into()),
        token: env_token.unwrap_or_default(),
        channels: Vec::new(),
        after: None,
        name: None,
        until: None,
    };
    let seq = |flag: &str, v: String| {
        v.parse::<u64>()
            .map_err(|_| format!("{flag} {v:?}: a sequence number (0 or more) is expected"))
    };
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--addr" => o.addr = value("--addr")?,
            "--token" => o.token = value("--token")?,
            "--channel" => o.channels.push(value("--channel")?),
            "--after" => o.after = Some(seq("--after", value("--after")?)?),
            "--name" => o.name = Some(value("--name")?).filter(|n| !n.is_empty()),
            "--until" => o.until = Some(seq("--until", value("--until")?)?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    if o.after.is_some() && o.name.is_some() {
        return Err("--after and --name exclude each other: a named subscription resumes from its stored position".into());
    }
    Ok(o)
}

fn request(o: &Options) -> Subscribe {
    let (start, from_seq) = match (&o.name, o.after) {
        (Some(_), _) => (start::RESUME, 0),
        (None, Some(seq)) => (start::AFTER, seq),
        (None, None) => (start::SNAPSHOT, 0),
    };
    Subscribe {
        name: o.name.clone().unwrap_or_default(),
        start,
        from_seq,
        channels: o.channels.clone(),
        skus: vec![],
        sku_prefix: String::new(),
        kinds: kinds::ATP,
        coalesce_ms: 0,
    }
}

fn print(out: &mut impl Write, item: &PushItem) {
    let _ = match item {
        PushItem::Atp(a) => writeln!(
            out,
            "seq {} {} on {}: {} -> {}",
            a.seq, a.sku, a.channel, a.previous, a.atp
        ),
        PushItem::Snapshot(s) => writeln!(
            out,
            "snapshot {} on {}: {} (as of seq {})",
            s.sku, s.channel, s.atp, s.seq
        ),
        PushItem::SnapshotEnd { seq } => writeln!(out, "snapshot complete at seq {seq}"),
        // Positions, catalog changes and the rest are not printed; `Lagged` comes back as an
        // error of the stream.
        _ => Ok(()),
    };
}

/// Consumes the feed until `until` (or forever), writing each change to `out`; returns
/// the final position.
pub async fn consume(o: &Options, out: &mut impl Write) -> Result<u64, ClientError> {
    let config = ClientConfig::new(&o.addr).token(&o.token);
    let mut sub = Subscriber::subscribe(config, request(o)).await?;
    loop {
        if o.until.is_some_and(|u| sub.position() >= u) && !sub.in_snapshot() {
            let _ = writeln!(out, "position {}", sub.position());
            return Ok(sub.position());
        }
        // `Subscriber::next` (inherent) reads one frame too; the Stream's `next` is named
        // in full because the inherent method would win.
        match StreamExt::next(&mut sub).await {
            Some(Ok(items)) => {
                for item in &items {
                    print(out, item);
                }
                if o.name.is_some() {
                    sub.ack().await?;
                }
            }
            // A disconnect or `Lagged` ends the stream: continue after the position.
            Some(Err(e)) if e.is_retriable() => {
                let _ = writeln!(out, "{e}; resuming after seq {}", sub.position());
                resume(&mut sub).await?;
            }
            Some(Err(e)) => return Err(e),
            None => resume(&mut sub).await?,
        }
    }
}

/// Subscribes again after the position, waiting out a server that is restarting.
async fn resume(sub: &mut Subscriber) -> Result<(), ClientError> {
    let mut attempt = 1;
    loop {
        match sub.resume().await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_retriable() && attempt < MAX_RESUMES => {
                attempt += 1;
                tokio::time::sleep(RESUME_WAIT).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let o = match parse_args(
        std::env::args().skip(1),
        std::env::var("OMNISTOCK_ADDR").ok(),
        std::env::var("OMNISTOCK_TOKEN").ok(),
    ) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match consume(&o, &mut std::io::stdout()).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("feed consumer failed: {e}");
            ExitCode::FAILURE
        }
    }
}
