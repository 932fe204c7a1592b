//! `zdeploy analyze`: runs a service's analysis once, now, and shows every measurement
//! with the query that was actually run. Exit 0 pass, 1 fail, 2 inconclusive.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use zdeploy_api::service::Verdict;
use zdeploy_controller::analysis::promql::Target;
use zdeploy_controller::analysis::scrape::scrape;
use zdeploy_controller::analysis::{Analyzer, Source, Span};

use crate::Output;

/// Arguments of `zdeploy analyze`.
#[derive(clap::Args)]
pub struct Args {
    /// The ZmqService manifest whose analysis to run.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Query this Prometheus (built-in and PromQL metrics, firing alerts).
    #[arg(long, conflicts_with = "scrape", required_unless_present = "scrape")]
    prometheus: Option<String>,
    /// Scrape this zgate `/metrics` URL twice, `--over` apart (built-in metrics only).
    #[arg(long)]
    scrape: Option<String>,
    /// Time between the two scrapes.
    #[arg(long, default_value = "5s")]
    over: zdeploy_api::Duration,
    /// With --prometheus: how long the canary has run. Built-in and `counts` metrics
    /// count its requests over this span (`increase(...[SINCE])`).
    #[arg(long, default_value = "10m", conflicts_with = "scrape")]
    since: zdeploy_api::Duration,
    /// Namespace label to select (leave out when zgate's metrics carry none).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Pool to judge: canary or stable.
    #[arg(long, default_value = "canary")]
    pool: zdeploy_api::Pool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// Runs the analysis once.
pub async fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let svc = crate::local::load_service(&args.file)?;
    let name = kube::ResourceExt::name_any(&svc);
    let target = Target {
        service: name,
        namespace: args.namespace.clone(),
        pool: args.pool,
    };
    let spec = svc.spec.strategy.analysis().clone();
    let (source, age) = match (&args.prometheus, &args.scrape) {
        (Some(url), _) => (Source::prometheus(url), args.since.get()),
        (None, Some(url)) => (
            Source::scrape(url),
            args.over.get() + Duration::from_millis(100),
        ),
        (None, None) => unreachable!("clap requires one source"),
    };
    if let Some(url) = &args.scrape {
        serves(url, &target.service).await?;
    }
    let mut analyzer = Analyzer::new(source, target, spec, None, Span::CanaryLife);
    if args.scrape.is_some() {
        if let Err(e) = analyzer.observe().await {
            anyhow::bail!("{e}");
        }
        eprintln!("scraped once; measuring again in {}", args.over);
        tokio::time::sleep(args.over.get()).await;
    }
    let run = analyzer.run(age).await;
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"verdict": run.verdict, "measurements": run.measurements})
            )?
        ),
        Output::Text => {
            for m in &run.measurements {
                let value = m
                    .value
                    .map(|v| format!("{v:.6}"))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<16} {:<13} value {value}\n  query:  {}\n  reason: {}",
                    m.metric,
                    format!("{:?}", m.verdict).to_lowercase(),
                    m.query,
                    m.reason
                );
            }
            println!("verdict: {}", format!("{:?}", run.verdict).to_lowercase());
        }
    }
    Ok(ExitCode::from(match run.verdict {
        Verdict::Pass => 0,
        Verdict::Fail => 1,
        Verdict::Inconclusive => 2,
    }))
}

/// Checks that the zgate at `url` serves `service`; when it does not, names the services
/// it does serve (a manifest for another service would otherwise read as no traffic).
async fn serves(url: &str, service: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let page = scrape(&http, url).await.map_err(anyhow::Error::msg)?;
    let found: BTreeSet<&str> = page
        .select("zgate_requests_total", &[])
        .into_iter()
        .filter_map(|s| s.labels.get("service").map(String::as_str))
        .collect();
    if found.is_empty() || found.contains(service) {
        return Ok(());
    }
    let names: Vec<&str> = found.into_iter().collect();
    anyhow::bail!(
        "the zgate at {url} serves {}, not {service:?} (the manifest's metadata.name): analyze with that service's manifest",
        names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}
