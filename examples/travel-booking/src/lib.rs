//! # Travel booking, a Sagaflow example
//!
//! `BookFlight` → `BookHotel` → `BookCar`; when a booking fails, the saga
//! cancels, in reverse order, what the trip had booked (`CancelCar` →
//! `CancelHotel` → `CancelFlight`, Catch branches in
//! `travel_booking.asl.json`, each compensation with a Retry).
//!
//! The three services are participants, each with its own state: a
//! reservation [`Ledger`], kept in the memory of the process that serves
//! it. Bookings are idempotent (keyed by the task's idempotency key, so a
//! redelivered task books once) and cancellations are by trip (a
//! cancellation finds whatever the trip holds, and cancelling twice is
//! harmless).
//!
//! Failures are injected per trip with the input field `"fail"`
//! (`"flight"`, `"hotel"` or `"car"`), or at random with
//! [`Services::failure_rate`]; `"flaky_cancel": true` makes every
//! cancellation fail once first, to show the compensations' Retry.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sagaflow::{Execution, ExecutionResult, Handler, Sagaflow, SagaflowBuilder, Status};
use sagaflow::{TaskContext, TaskError, handler_fn};
use serde_json::{Value, json};

/// The state machine (ASL), as deployed.
pub const DEFINITION: &str = include_str!("../travel_booking.asl.json");

/// The name the state machine is deployed under.
pub const STATE_MACHINE: &str = "travel-booking";

/// One reservation held by a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// The confirmation number (`FL-0001`, ...).
    pub confirmation: String,
    /// The trip it belongs to.
    pub trip_id: String,
}

/// What a service did, in the order the services did it (shared by the
/// services of one process, for demos and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// `BookFlight`, `CancelHotel`, ...
    pub step: String,
    /// The trip.
    pub trip_id: String,
    /// The confirmations booked or cancelled (empty: nothing to cancel).
    pub confirmations: Vec<String>,
}

/// The steps taken by the services of this process, in order.
#[derive(Debug, Default)]
pub struct Journal {
    entries: Mutex<Vec<JournalEntry>>,
}

impl Journal {
    fn push(&self, step: &str, trip_id: &str, confirmations: Vec<String>) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(JournalEntry {
                step: step.to_string(),
                trip_id: trip_id.to_string(),
                confirmations,
            });
    }

    /// Every entry so far.
    pub fn entries(&self) -> Vec<JournalEntry> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The steps taken for one trip, in order.
    pub fn steps_of(&self, trip_id: &str) -> Vec<String> {
        self.entries()
            .into_iter()
            .filter(|e| e.trip_id == trip_id)
            .map(|e| e.step)
            .collect()
    }
}

#[derive(Debug, Default)]
struct LedgerState {
    next: u64,
    /// Active reservations by confirmation.
    active: BTreeMap<String, Reservation>,
    /// Confirmation by idempotency key: a redelivered booking task gets
    /// the reservation it already made.
    by_key: HashMap<String, String>,
    cancelled: u64,
}

/// One service's reservations (its own database, in memory).
#[derive(Debug)]
pub struct Ledger {
    prefix: &'static str,
    state: Mutex<LedgerState>,
}

impl Ledger {
    /// An empty ledger whose confirmations start with `prefix` (`FL`).
    pub fn new(prefix: &'static str) -> Ledger {
        Ledger {
            prefix,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Books once per `key`: a second call with the same key returns the
    /// same confirmation.
    pub fn book(&self, key: &str, trip_id: &str) -> String {
        let mut s = self.lock();
        if let Some(c) = s.by_key.get(key) {
            return c.clone();
        }
        s.next += 1;
        let confirmation = format!("{}-{:04}", self.prefix, s.next);
        s.by_key.insert(key.to_string(), confirmation.clone());
        s.active.insert(
            confirmation.clone(),
            Reservation {
                confirmation: confirmation.clone(),
                trip_id: trip_id.to_string(),
            },
        );
        confirmation
    }

    /// Cancels every active reservation of `trip_id`; returns their
    /// confirmations (empty when there was nothing to cancel).
    pub fn cancel_trip(&self, trip_id: &str) -> Vec<String> {
        let mut s = self.lock();
        let gone: Vec<String> = s
            .active
            .values()
            .filter(|r| r.trip_id == trip_id)
            .map(|r| r.confirmation.clone())
            .collect();
        for c in &gone {
            s.active.remove(c);
        }
        s.cancelled += gone.len() as u64;
        gone
    }

    /// The active reservations of `trip_id`.
    pub fn active_for(&self, trip_id: &str) -> Vec<Reservation> {
        self.lock()
            .active
            .values()
            .filter(|r| r.trip_id == trip_id)
            .cloned()
            .collect()
    }

    /// How many reservations are active.
    pub fn active_count(&self) -> usize {
        self.lock().active.len()
    }

    /// How many reservations were cancelled.
    pub fn cancelled_count(&self) -> u64 {
        self.lock().cancelled
    }
}

/// The three services of the example (flights, hotels, cars) and what
/// they share in this process.
#[derive(Debug)]
pub struct Services {
    /// The airline's reservations.
    pub flights: Ledger,
    /// The hotel's reservations.
    pub hotels: Ledger,
    /// The car rental's reservations.
    pub cars: Ledger,
    /// Every step taken, in order.
    pub journal: Journal,
    /// Probability (0 to 1) that a booking fails on its own.
    pub failure_rate: f64,
    /// Print each step as it happens.
    pub verbose: bool,
}

impl Services {
    /// Services with empty ledgers, no random failures.
    pub fn new(verbose: bool) -> Services {
        Services {
            flights: Ledger::new("FL"),
            hotels: Ledger::new("HO"),
            cars: Ledger::new("CA"),
            journal: Journal::default(),
            failure_rate: 0.0,
            verbose,
        }
    }

    /// The same with a random failure rate for bookings.
    pub fn with_failure_rate(mut self, rate: f64) -> Services {
        self.failure_rate = rate.clamp(0.0, 1.0);
        self
    }

    /// The ledger of a kind (`flight`, `hotel`, `car`).
    fn ledger(&self, kind: Kind) -> &Ledger {
        match kind {
            Kind::Flight => &self.flights,
            Kind::Hotel => &self.hotels,
            Kind::Car => &self.cars,
        }
    }

    /// Active reservations of a trip across the three services.
    pub fn active_for(&self, trip_id: &str) -> Vec<Reservation> {
        let mut all = self.flights.active_for(trip_id);
        all.extend(self.hotels.active_for(trip_id));
        all.extend(self.cars.active_for(trip_id));
        all
    }

    fn say(&self, line: String) {
        if self.verbose {
            println!("  {line}");
        }
    }

    fn random_failure(&self, key: &str) -> bool {
        if self.failure_rate <= 0.0 {
            return false;
        }
        let draw = std::collections::hash_map::RandomState::new().hash_one(key);
        (draw as f64 / u64::MAX as f64) < self.failure_rate
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Flight,
    Hotel,
    Car,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Flight => "flight",
            Kind::Hotel => "hotel",
            Kind::Car => "car",
        }
    }

    fn book_step(self) -> &'static str {
        match self {
            Kind::Flight => "BookFlight",
            Kind::Hotel => "BookHotel",
            Kind::Car => "BookCar",
        }
    }

    fn cancel_step(self) -> &'static str {
        match self {
            Kind::Flight => "CancelFlight",
            Kind::Hotel => "CancelHotel",
            Kind::Car => "CancelCar",
        }
    }

    fn unavailable(self) -> &'static str {
        match self {
            Kind::Flight => "FlightUnavailable",
            Kind::Hotel => "HotelUnavailable",
            Kind::Car => "CarUnavailable",
        }
    }
}

fn trip_id(input: &Value) -> Result<String, TaskError> {
    input
        .get("trip_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| TaskError::new("InvalidTrip", "the trip has no string 'trip_id'"))
}

fn book(
    services: &Services,
    kind: Kind,
    input: &Value,
    ctx: &TaskContext,
) -> Result<Value, TaskError> {
    let trip = trip_id(input)?;
    let key = ctx.idempotency_key();
    let injected = input.get("fail").and_then(Value::as_str) == Some(kind.name());
    if injected || services.random_failure(&key) {
        let cause = format!("no {} available for trip {trip}", kind.name());
        services.say(format!("{}: FAILED ({cause})", kind.book_step()));
        services
            .journal
            .push(&format!("{}Failed", kind.book_step()), &trip, Vec::new());
        return Err(TaskError::new(kind.unavailable(), cause));
    }
    let confirmation = services.ledger(kind).book(&key, &trip);
    services.say(format!(
        "{}: booked {confirmation} (trip {trip})",
        kind.book_step()
    ));
    services
        .journal
        .push(kind.book_step(), &trip, vec![confirmation.clone()]);
    Ok(json!({ "confirmation": confirmation }))
}

fn cancel(
    services: &Services,
    kind: Kind,
    input: &Value,
    ctx: &TaskContext,
) -> Result<Value, TaskError> {
    let trip = trip_id(input)?;
    if input.get("flaky_cancel").and_then(Value::as_bool) == Some(true) && ctx.attempt == 0 {
        services.say(format!(
            "{}: service unavailable, will be retried (trip {trip})",
            kind.cancel_step()
        ));
        return Err(TaskError::new(
            "ServiceUnavailable",
            format!("the {} service is briefly unavailable", kind.name()),
        ));
    }
    let cancelled = services.ledger(kind).cancel_trip(&trip);
    if cancelled.is_empty() {
        services.say(format!(
            "{}: nothing to cancel (trip {trip})",
            kind.cancel_step()
        ));
    } else {
        services.say(format!(
            "{}: cancelled {} (trip {trip})",
            kind.cancel_step(),
            cancelled.join(", ")
        ));
    }
    services
        .journal
        .push(kind.cancel_step(), &trip, cancelled.clone());
    Ok(json!({ "cancelled": cancelled }))
}

/// The six handlers, by the names the definition's resources give
/// (`...:function:BookFlight` → `BookFlight`).
pub fn handlers(services: &Arc<Services>) -> Vec<(String, Arc<dyn Handler>)> {
    let mut out: Vec<(String, Arc<dyn Handler>)> = Vec::new();
    for kind in [Kind::Flight, Kind::Hotel, Kind::Car] {
        let s = Arc::clone(services);
        out.push((
            kind.book_step().to_string(),
            Arc::new(handler_fn(move |input: Value, ctx: TaskContext| {
                let result = book(&s, kind, &input, &ctx);
                async move { result }
            })),
        ));
        let s = Arc::clone(services);
        out.push((
            kind.cancel_step().to_string(),
            Arc::new(handler_fn(move |input: Value, ctx: TaskContext| {
                let result = cancel(&s, kind, &input, &ctx);
                async move { result }
            })),
        ));
    }
    out
}

/// Registers the six handlers on a builder.
pub fn register(builder: SagaflowBuilder, services: &Arc<Services>) -> SagaflowBuilder {
    handlers(services)
        .into_iter()
        .fold(builder, |b, (name, h)| b.handler_arc(name, h))
}

/// A trip's input: `fail` injects a failure at that booking.
pub fn trip(trip_id: &str, fail: Option<&str>) -> Value {
    let mut input = json!({
        "trip_id": trip_id,
        "traveller": "Ada Lovelace",
        "from": "LHR",
        "to": "JFK",
        "depart": "2026-12-01",
        "return": "2026-12-08"
    });
    if let Some(f) = fail {
        input["fail"] = json!(f);
    }
    input
}

/// What became of one trip.
#[derive(Debug, Clone, PartialEq)]
pub struct TripReport {
    /// The trip.
    pub trip_id: String,
    /// The execution's name.
    pub execution: String,
    /// How the execution ended.
    pub status: Status,
    /// Confirmations booked and kept (`flight`, `hotel`, `car`).
    pub booked: Vec<(String, String)>,
    /// The error that made the trip fail (`CarUnavailable`, ...).
    pub failure: Option<String>,
    /// The compensation states entered, in order.
    pub compensations: Vec<String>,
    /// Confirmations undone by the compensations.
    pub undone: Vec<String>,
    /// Every state entered, in order.
    pub states: Vec<String>,
    /// The execution's trace id, when tracing is on (open it in Jaeger).
    pub trace_id: Option<String>,
}

impl TripReport {
    /// Reads a finished execution: its result and history.
    pub async fn of(
        trip_id: &str,
        execution: &Execution,
        result: &ExecutionResult,
    ) -> Result<TripReport, sagaflow::Error> {
        let states = execution.states_entered().await?;
        let compensations: Vec<String> = states
            .iter()
            .filter(|s| s.starts_with("Cancel"))
            .cloned()
            .collect();
        let mut report = TripReport {
            trip_id: trip_id.to_string(),
            execution: result.name.clone(),
            status: result.status,
            booked: Vec::new(),
            failure: None,
            compensations,
            undone: Vec::new(),
            states,
            trace_id: result.trace_id.clone(),
        };
        if let Some(output) = &result.output {
            for kind in ["flight", "hotel", "car"] {
                if let Some(c) = output.get(kind).and_then(Value::as_str) {
                    report.booked.push((kind.to_string(), c.to_string()));
                }
            }
        }
        // A cancelled trip's summary is the Fail state's cause (JSON).
        if let Some(summary) = result
            .cause
            .as_deref()
            .and_then(|c| serde_json::from_str::<Value>(c).ok())
        {
            report.failure = summary
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string);
            for kind in ["car", "hotel", "flight"] {
                if let Some(list) = summary
                    .pointer(&format!("/undone/{kind}/cancelled"))
                    .and_then(Value::as_array)
                {
                    report
                        .undone
                        .extend(list.iter().filter_map(Value::as_str).map(str::to_string));
                }
            }
        } else if result.status != Status::Succeeded {
            report.failure = result.error.clone();
        }
        Ok(report)
    }

    /// One line for the summary.
    pub fn line(&self) -> String {
        match self.status {
            Status::Succeeded => {
                let booked: Vec<String> = self
                    .booked
                    .iter()
                    .map(|(k, c)| format!("{k} {c}"))
                    .collect();
                format!(
                    "{}: {} — booked {}",
                    self.trip_id,
                    self.status.as_str(),
                    booked.join(", ")
                )
            }
            _ => format!(
                "{}: {} — {}; compensations {}; undone: {}",
                self.trip_id,
                self.status.as_str(),
                self.failure.as_deref().unwrap_or("no error"),
                if self.compensations.is_empty() {
                    "none".to_string()
                } else {
                    self.compensations.join(" → ")
                },
                if self.undone.is_empty() {
                    "nothing".to_string()
                } else {
                    self.undone.join(", ")
                }
            ),
        }
    }
}

/// Starts one execution per trip, waits for them all and reports each.
pub async fn run_trips(
    saga: &Sagaflow,
    trips: &[Value],
    timeout: Duration,
) -> Result<Vec<TripReport>, sagaflow::Error> {
    let mut started = Vec::new();
    for input in trips {
        let trip = input
            .get("trip_id")
            .and_then(Value::as_str)
            .unwrap_or("trip")
            .to_string();
        let execution = saga.start(STATE_MACHINE, input.clone(), None).await?;
        started.push((trip, execution));
    }
    let mut reports = Vec::new();
    for (trip, execution) in started {
        let result = execution.wait(timeout).await?;
        reports.push(TripReport::of(&trip, &execution, &result).await?);
    }
    Ok(reports)
}

/// The expected compensation order when a trip fails at `fail`.
pub fn expected_compensations(fail: &str) -> Vec<&'static str> {
    match fail {
        "flight" => vec!["CancelFlight"],
        "hotel" => vec!["CancelHotel", "CancelFlight"],
        "car" => vec!["CancelCar", "CancelHotel", "CancelFlight"],
        _ => vec![],
    }
}
