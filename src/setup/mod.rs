//! Setting the cluster up for the documents: the ILM policy and templates in
//! Elasticsearch (installed at start, or by `logferry setup`) and the Kibana saved objects
//! (by `logferry setup --kibana-url`).

pub mod elasticsearch;
pub mod kibana;

use crate::config::ElasticsearchConfig;
use crate::log_limit;
use crate::sink::elasticsearch::backoff::Backoff;
use ::elasticsearch::http::transport::Transport;

/// Installs the index setup, retrying until Elasticsearch answers. Shipping waits for
/// it, so the data stream is never created without our template.
pub async fn ensure(
    transport: &Transport,
    cfg: &ElasticsearchConfig,
    retention: &crate::config::RetentionConfig,
    kept: &[String],
) {
    let rs = elasticsearch::resources(cfg, retention, kept);
    let mut backoff = Backoff::new(cfg.retry_initial_backoff, cfg.retry_max_backoff);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match elasticsearch::apply(transport, &rs, false).await {
            Ok(changes) => {
                for (r, c) in changes {
                    match c {
                        elasticsearch::Change::Differs => {
                            tracing::warn!(kind = r.kind, name = %r.name, "{c}")
                        }
                        _ => tracing::info!(kind = r.kind, name = %r.name, "{c}"),
                    }
                }
                if attempts > 1 {
                    tracing::info!(attempts, "Elasticsearch index setup done; shipping starts");
                }
                return;
            }
            Err(e @ elasticsearch::SetupError::Refused { .. }) => {
                // Retrying will not change a refusal (e.g. a user allowed to write but not
                // to manage templates): ship, so that no line waits on it.
                tracing::error!(error = %e, "Elasticsearch refused the index setup; shipping without it (run `logferry setup` with a privileged user)");
                return;
            }
            Err(e) => {
                let wait = backoff.failed();
                if let Some(held_back) = log_limit::allow("es.setup") {
                    tracing::error!(error = %e, attempts, held_back, retry_in = ?wait, "Elasticsearch index setup failed; shipping waits for it");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Why `logferry setup` could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}: {1}")]
    Config(String, String),
    #[error("--kibana-url: a user or password in the URL is refused: Kibana is reached with the credentials of output.elasticsearch")]
    KibanaUserinfo,
    #[error(transparent)]
    Client(#[from] crate::sink::elasticsearch::client::ClientError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("setup failed: {0}")]
    Elasticsearch(#[from] elasticsearch::SetupError),
    #[error("Kibana import failed: {0}")]
    Kibana(#[from] kibana::KibanaError),
    #[error("cannot write the report: {0}")]
    Output(std::io::Error),
}

impl CommandError {
    /// 2 for what the user must change in the config or the command line, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::Config(..) | CommandError::KibanaUserinfo | CommandError::Client(_) => 2,
            _ => 1,
        }
    }
}

/// `logferry setup`: installs the ILM policy and templates, and with `kibana` (URL, space)
/// imports the saved objects; with `dry_run` only prints the requests. Reports each
/// object to `out`. `Ok(false)`: done, but something differs or failed (said in the report).
pub fn command(
    cfg: &crate::config::Config,
    dry_run: bool,
    overwrite: bool,
    kibana: Option<(String, Option<String>)>,
    out: &mut dyn std::io::Write,
) -> Result<bool, CommandError> {
    use crate::sink::elasticsearch::{client::BulkClient, target::Router};
    let es = &cfg.output.elasticsearch;
    es.validate().map_err(|(k, m)| CommandError::Config(k, m))?;
    if kibana
        .as_ref()
        .is_some_and(|(url, _)| crate::config::has_userinfo(url))
    {
        return Err(CommandError::KibanaUserinfo);
    }
    cfg.retention
        .validate(es.retention_days)
        .map_err(|(k, m)| CommandError::Config(k, m))?;
    let resources = elasticsearch::resources(es, &cfg.retention, &cfg.source.kept_objects());
    let objects = kibana::saved_objects(&Router::new(es, &cfg.retention).index_pattern())?;
    let report = |out: &mut dyn std::io::Write, text: String| {
        out.write_all(text.as_bytes()).map_err(CommandError::Output)
    };
    if dry_run {
        report(out, elasticsearch::describe(&resources))?;
        if let Some((url, space)) = &kibana {
            let at = space
                .as_ref()
                .map(|s| format!("s/{s}/"))
                .unwrap_or_default();
            report(out, format!("# Kibana saved objects\nPOST {url}/{at}api/saved_objects/_import?overwrite={overwrite}\n{objects}"))?;
        }
        return Ok(true);
    }
    let client = BulkClient::new(es)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CommandError::Runtime)?;
    let mut complete = true;
    for (r, c) in rt.block_on(elasticsearch::apply(
        client.transport(),
        &resources,
        overwrite,
    ))? {
        complete &= c != elasticsearch::Change::Differs;
        report(out, format!("{} {}: {c}\n", r.kind, r.name))?;
    }
    if let Some((url, space)) = kibana {
        let t = kibana::transport(&url, es)?;
        let items = rt.block_on(kibana::import(&t, space.as_deref(), &objects, overwrite))?;
        for i in items {
            // An object that exists may well be ours unchanged: Kibana cannot tell.
            complete &= !matches!(i.outcome, kibana::Outcome::Failed(_));
            report(
                out,
                format!("Kibana {} {:?}: {}\n", i.kind, i.title, i.outcome),
            )?;
        }
    }
    Ok(complete)
}
