//! `travel-booking`: runs the travel booking saga.
//!
//! - `travel-booking` (or `travel-booking run`): everything in this process,
//!   no NATS (Sagaflow's embedded mode);
//! - `travel-booking participants --nats URL`: serves the six participants
//!   over NATS until Ctrl-C;
//! - `travel-booking demo --nats URL`: deploys the saga and runs trips
//!   against the coordinator (`sagaflow coordinator --nats URL`) and the
//!   participants running elsewhere.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sagaflow::{Mode, Sagaflow, Status};
use serde_json::Value;
use travel_booking::{DEFINITION, STATE_MACHINE, Services, TripReport, run_trips, trip};

/// How long the demo waits for one trip.
const TRIP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "travel-booking",
    about = "The travel booking saga: book a flight, a hotel and a car, compensating on failure.",
    long_about = "The travel booking saga: book a flight, a hotel and a car; when a booking fails, \
                  cancel what was booked, in reverse order.\n\nWithout a command it runs everything \
                  in this process with no NATS (Sagaflow's embedded mode)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    trips: TripArgs,
}

#[derive(Debug, clap::Args)]
struct TripArgs {
    /// Make this booking fail: flight, hotel or car (one trip).
    #[arg(long, global = true, value_parser = ["flight", "hotel", "car"])]
    fail: Option<String>,
    /// Probability (0 to 1) that each booking fails on its own (the
    /// participants' setting: give it to `participants` when distributed).
    #[arg(long, global = true, default_value_t = 0.0)]
    failure_rate: f64,
    /// How many trips to book at once (default: two, the second failing at
    /// the car).
    #[arg(long, global = true)]
    trips: Option<usize>,
    /// Every cancellation fails once before it succeeds (shows the
    /// compensations' Retry).
    #[arg(long, global = true)]
    flaky_cancellations: bool,
    /// One trip's input, as JSON (fields: trip_id, fail, flaky_cancel, ...).
    #[arg(long, global = true, value_name = "JSON")]
    input: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in this process, no NATS (the default).
    Run,
    /// Serve the participants (BookFlight, CancelFlight, ...) over NATS until Ctrl-C.
    Participants {
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Deploy the saga and book trips over NATS.
    Demo {
        #[command(flatten)]
        nats: NatsArgs,
        /// Also serve the participants in this process.
        #[arg(long)]
        with_participants: bool,
    },
}

#[derive(Debug, clap::Args)]
struct NatsArgs {
    /// The NATS server.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Also run a coordinator in this process.
    #[arg(long)]
    with_coordinator: bool,
}

/// How long the demo waits for a coordinator to answer (one may be
/// starting at the same time).
const COORDINATOR_PATIENCE: Duration = Duration::from_secs(30);

/// Where the demo says Jaeger's UI is (`JAEGER_UI`, default the
/// all-in-one's `http://localhost:16686`).
fn jaeger_ui() -> String {
    std::env::var("JAEGER_UI").unwrap_or_else(|_| "http://localhost:16686".to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sagaflow::app::run_app("travel-booking", || run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&cli.trips.failure_rate) {
        bail!("--failure-rate must be between 0 and 1");
    }
    match cli.command {
        None | Some(Command::Run) => embedded(&cli.trips).await,
        Some(Command::Participants { nats }) => participants(&cli.trips, &nats).await,
        Some(Command::Demo {
            nats,
            with_participants,
        }) => demo(&cli.trips, &nats, with_participants).await,
    }
}

fn services(args: &TripArgs) -> Arc<Services> {
    Arc::new(Services::new(true).with_failure_rate(args.failure_rate))
}

/// The trips to book, from the flags.
fn trips(args: &TripArgs) -> anyhow::Result<Vec<Value>> {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000)
        .unwrap_or(0);
    let id = |i: usize| format!("trip-{run:06}-{i}");
    let mut trips = if let Some(text) = &args.input {
        let input: Value = serde_json::from_str(text).context("--input is not JSON")?;
        if input.get("trip_id").and_then(Value::as_str).is_none() {
            bail!("--input needs a string \"trip_id\"");
        }
        vec![input]
    } else if let Some(n) = args.trips {
        (1..=n)
            .map(|i| trip(&id(i), args.fail.as_deref()))
            .collect()
    } else if let Some(fail) = &args.fail {
        vec![trip(&id(1), Some(fail))]
    } else {
        vec![trip(&id(1), None), trip(&id(2), Some("car"))]
    };
    if args.flaky_cancellations {
        for t in &mut trips {
            t["flaky_cancel"] = Value::Bool(true);
        }
    }
    Ok(trips)
}

fn describe_trip(input: &Value) -> String {
    let id = input["trip_id"].as_str().unwrap_or("?");
    match input.get("fail").and_then(Value::as_str) {
        Some(f) => format!("{id} ({f} booking will fail)"),
        None => format!("{id} (no failure injected)"),
    }
}

/// Books the trips, one after the other when there are few (readable
/// progress), all at once otherwise; prints the summary.
async fn book(saga: &Sagaflow, trips: &[Value]) -> anyhow::Result<Vec<TripReport>> {
    let reports = if trips.len() <= 3 {
        let mut reports = Vec::new();
        for t in trips {
            println!("\n▶ trip {}", describe_trip(t));
            reports.extend(run_trips(saga, std::slice::from_ref(t), TRIP_TIMEOUT).await?);
        }
        reports
    } else {
        println!("\n▶ {} trips at once", trips.len());
        run_trips(saga, trips, TRIP_TIMEOUT).await?
    };
    println!("\nSummary");
    for r in &reports {
        println!("  {}", r.line());
        if saga.mode() == Mode::Distributed {
            println!("    states: {}", r.states.join(" → "));
        }
        if let Some(trace) = &r.trace_id {
            println!("    trace: {trace} (Jaeger: {}/trace/{trace})", jaeger_ui());
        }
    }
    if reports.iter().all(|r| r.trace_id.is_none()) {
        println!(
            "  tracing is off: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://localhost:4317) to see each trip as one trace in Jaeger"
        );
    }
    Ok(reports)
}

/// A trip ended as the saga promises: fully booked, or failed with its
/// compensations run.
fn consistent(r: &TripReport) -> bool {
    match r.status {
        Status::Succeeded => r.booked.len() == 3,
        Status::Failed => {
            r.failure.is_some() && r.compensations.last().is_some_and(|c| c == "CancelFlight")
        }
        _ => false,
    }
}

fn verdict(reports: &[TripReport], ledger_ok: bool) -> ExitCode {
    let booked = reports
        .iter()
        .filter(|r| r.status == Status::Succeeded)
        .count();
    let compensated = reports
        .iter()
        .filter(|r| r.status == Status::Failed)
        .count();
    println!("  {booked} trip(s) booked, {compensated} compensated");
    if reports.iter().all(consistent) && ledger_ok {
        ExitCode::SUCCESS
    } else {
        println!("  some trips did not end as the saga promises (see above)");
        ExitCode::FAILURE
    }
}

/// Checks the ledgers: a booked trip holds its three reservations, a
/// compensated one none.
fn check_ledgers(services: &Services, reports: &[TripReport]) -> bool {
    let mut ok = true;
    for r in reports {
        let held = services.active_for(&r.trip_id).len();
        let expected = if r.status == Status::Succeeded { 3 } else { 0 };
        if held != expected {
            println!(
                "  ledger: trip {} holds {held} reservation(s), expected {expected}",
                r.trip_id
            );
            ok = false;
        }
    }
    println!(
        "  ledgers: {} flight(s), {} hotel(s), {} car(s) held; {} reservation(s) cancelled",
        services.flights.active_count(),
        services.hotels.active_count(),
        services.cars.active_count(),
        services.flights.cancelled_count()
            + services.hotels.cancelled_count()
            + services.cars.cancelled_count()
    );
    ok
}

async fn embedded(args: &TripArgs) -> anyhow::Result<ExitCode> {
    println!(
        "Sagaflow travel booking — embedded: coordinator and participants in this process, no NATS"
    );
    let services = services(args);
    let saga = travel_booking::register(Sagaflow::builder(), &services)
        .state_machine(STATE_MACHINE, DEFINITION)
        .build()
        .await?;
    let reports = book(&saga, &trips(args)?).await?;
    let ledger_ok = check_ledgers(&services, &reports);
    saga.shutdown().await;
    Ok(verdict(&reports, ledger_ok))
}

async fn participants(args: &TripArgs, nats: &NatsArgs) -> anyhow::Result<ExitCode> {
    let services = services(args);
    let saga = travel_booking::register(Sagaflow::builder(), &services)
        .nats_url(Some(&nats.nats))
        .run_coordinator(nats.with_coordinator)
        .build()
        .await
        .with_context(|| format!("cannot serve the participants on {}", nats.nats))?;
    println!(
        "travel-booking participants serving BookFlight, BookHotel, BookCar, CancelCar, CancelHotel, CancelFlight on {}{} (failure rate {}); Ctrl-C to stop",
        nats.nats,
        if nats.with_coordinator {
            ", with a coordinator"
        } else {
            ""
        },
        args.failure_rate
    );
    // Ctrl-C, or SIGTERM from `docker stop`.
    sagaflow::app::stop_signal()
        .await
        .context("cannot listen for Ctrl-C or SIGTERM")?;
    println!("stopping: finishing the tasks in flight");
    saga.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn demo(
    args: &TripArgs,
    nats: &NatsArgs,
    with_participants: bool,
) -> anyhow::Result<ExitCode> {
    println!(
        "Sagaflow travel booking — distributed over NATS at {}{}{}",
        nats.nats,
        if nats.with_coordinator {
            ", coordinator in this process"
        } else {
            ""
        },
        if with_participants {
            ", participants in this process"
        } else {
            ""
        }
    );
    let services = services(args);
    let mut builder = Sagaflow::builder()
        .nats_url(Some(&nats.nats))
        .run_coordinator(nats.with_coordinator)
        .serve_handlers(with_participants);
    if with_participants {
        builder = travel_booking::register(builder, &services);
    }
    let saga = builder
        .build()
        .await
        .with_context(|| format!("cannot reach Sagaflow on {}", nats.nats))?;
    let version = saga
        .deploy_when_ready(STATE_MACHINE, DEFINITION, COORDINATOR_PATIENCE)
        .await
        .context(
            "cannot deploy the saga (is a coordinator running? `sagaflow coordinator --nats URL`)",
        )?;
    println!("deployed {STATE_MACHINE} version {version}");
    let reports = book(&saga, &trips(args)?).await?;
    let ledger_ok = if with_participants {
        check_ledgers(&services, &reports)
    } else {
        println!("  (the ledgers live in the participants' process; its log shows each step)");
        true
    };
    if let Some(r) = reports.first() {
        println!(
            "  inspect: sagaflow history {STATE_MACHINE}:{} --nats {}",
            r.execution, nats.nats
        );
    }
    saga.shutdown().await;
    Ok(verdict(&reports, ledger_ok))
}
