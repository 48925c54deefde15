//! The picture of a customer's billing timeline on their dashboard page: an SVG drawn by the
//! server (no script), with two lanes on one time axis. The upper lane is Stripe time (when a
//! fact happened), the lower one Subledger time (when Subledger learned it); a line joins the
//! two marks of each fact, so a late or redelivered webhook shows as a slanted line. Stretches
//! spent past due (in grace) or suspended are shaded behind both lanes.
//!
//! The geometry is computed here; `templates/dashboard/timeline.html` only places it, so the
//! template engine escapes every text that came from Stripe.

use chrono::{DateTime, Duration, Utc};
use subledger_engine::domain::dunning::DunningState;
use subledger_engine::{DunningSpan, TimelineEntry};

/// The most recent facts the picture draws; older ones are left to the table below it.
pub(super) const MOST_MARKS: usize = 300;

// The horizontal extent of the plot in the template's 960 × 200 view box (its lanes sit at
// y = 48 and 124, the axis at 160: the template draws those).
const PLOT_LEFT: f64 = 150.0;
const PLOT_RIGHT: f64 = 936.0;

/// One fact: where it sits on each lane, and what it was.
pub(super) struct Mark {
    pub stripe_x: String,
    pub known_x: String,
    /// `webhook`, `operator`, `backfill` or `reconciler`: how it came to be known.
    pub kind: &'static str,
    pub label: String,
}

/// A shaded stretch of dunning.
pub(super) struct Shade {
    pub x: String,
    pub width: String,
    /// `past_due` or `suspended`.
    pub state: &'static str,
    pub label: String,
}

pub(super) struct Tick {
    pub x: String,
    pub label: String,
    /// `start`, `middle` or `end`: the outermost labels stay inside the picture.
    pub anchor: &'static str,
}

/// What the template draws.
pub(super) struct TimelinePicture {
    pub marks: Vec<Mark>,
    pub shades: Vec<Shade>,
    pub ticks: Vec<Tick>,
    /// The picture in words, for screen readers.
    pub description: String,
}

fn coordinate(value: f64) -> String {
    format!("{value:.1}")
}

/// A span in seconds, as a coordinate needs it (a picture spans at most decades; longer is
/// drawn as decades).
fn seconds(span: Duration) -> f64 {
    f64::from(i32::try_from(span.num_seconds()).unwrap_or(i32::MAX))
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// How long after the fact Subledger learned it, as a person says it.
fn delay(learned_after: Duration) -> String {
    let seconds = learned_after.num_seconds();
    match seconds {
        ..=0 => "at once".to_owned(),
        1..=119 => format!("{seconds} s later"),
        120..=7199 => format!("{} min later", seconds / 60),
        7200..=172_799 => format!("{} h later", seconds / 3600),
        _ => format!("{} days later", seconds / 86_400),
    }
}

impl TimelinePicture {
    /// The picture of `entries` (the customer's timeline, oldest first; only the last
    /// [`MOST_MARKS`] are drawn) and their dunning `spans`, up to `now`.
    pub fn draw(entries: &[TimelineEntry], spans: &[DunningSpan], now: DateTime<Utc>) -> Self {
        let drawn = &entries[entries.len().saturating_sub(MOST_MARKS)..];
        let times = drawn
            .iter()
            .flat_map(|entry| [Some(entry.occurred_at), entry.recorded_at])
            .flatten()
            .chain(
                spans
                    .iter()
                    .flat_map(|span| [Some(span.from), span.until])
                    .flatten(),
            );
        let (Some(start), Some(mut end)) = (times.clone().min(), times.max()) else {
            return Self {
                marks: Vec::new(),
                shades: Vec::new(),
                ticks: Vec::new(),
                description: "Nothing has happened to this customer yet.".to_owned(),
            };
        };
        if spans.iter().any(|span| span.until.is_none()) {
            end = end.max(now);
        }
        // A single moment still gets an axis: an hour either side.
        let (start, end) = if end > start {
            (start, end)
        } else {
            (start - Duration::hours(1), end + Duration::hours(1))
        };
        let total = seconds(end - start);
        let x = |at: DateTime<Utc>| {
            let share = seconds(at - start) / total;
            PLOT_LEFT + share.clamp(0.0, 1.0) * (PLOT_RIGHT - PLOT_LEFT)
        };

        let marks = drawn
            .iter()
            .map(|entry| {
                let known = entry.recorded_at.unwrap_or(entry.occurred_at);
                let what = match &entry.stripe_event_type {
                    Some(stripe) => format!("{} ({stripe}", entry.event_type),
                    None => format!(
                        "{} ({}",
                        entry.event_type,
                        entry.actor.as_deref().unwrap_or("recorded")
                    ),
                };
                let source = entry
                    .stripe_event_id
                    .as_ref()
                    .map_or_else(String::new, |id| format!(", {id}"));
                Mark {
                    stripe_x: coordinate(x(entry.occurred_at)),
                    known_x: coordinate(x(known)),
                    kind: match entry.actor.as_deref() {
                        Some("operator") => "operator",
                        Some("backfill") => "backfill",
                        Some("reconciler") => "reconciler",
                        _ => "webhook",
                    },
                    label: format!(
                        "{what}{source}): at Stripe {}, learned {}",
                        when(entry.occurred_at),
                        delay(known - entry.occurred_at)
                    ),
                }
            })
            .collect();

        let shades = spans
            .iter()
            .map(|span| {
                let until = span.until.unwrap_or(end);
                let (state, name) = match span.state {
                    DunningState::Suspended => ("suspended", "Suspended"),
                    _ => ("past_due", "Past due, in grace"),
                };
                let left = x(span.from);
                Shade {
                    x: coordinate(left),
                    // A stretch shorter than a pixel is still visible.
                    width: coordinate((x(until) - left).max(2.0)),
                    state,
                    label: match span.until {
                        Some(until) => {
                            format!("{name} from {} to {}", when(span.from), when(until))
                        }
                        None => format!("{name} since {}", when(span.from)),
                    },
                }
            })
            .collect();

        let ticks = (0..=5)
            .map(|i| {
                let at = start + (end - start) / 5 * i;
                let label = if end - start > Duration::days(2) {
                    at.format("%Y-%m-%d").to_string()
                } else {
                    at.format("%m-%d %H:%M").to_string()
                };
                Tick {
                    x: coordinate(x(at)),
                    label,
                    anchor: match i {
                        0 => "start",
                        5 => "end",
                        _ => "middle",
                    },
                }
            })
            .collect();

        let late = drawn
            .iter()
            .filter(|entry| {
                entry
                    .recorded_at
                    .is_some_and(|known| known - entry.occurred_at > Duration::minutes(5))
            })
            .count();
        let description = format!(
            "{} facts from {} to {}; {late} learned more than five minutes after they happened; \
             {} stretches of dunning.",
            drawn.len(),
            when(start),
            when(end),
            spans.len()
        );
        Self {
            marks,
            shades,
            ticks,
            description,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use subledger_engine::domain::customer::CustomerEvent;

    use super::*;

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 2, hour, 0, 0).unwrap()
    }

    fn entry(happened: u32, learned: u32, stripe_event_id: &str) -> TimelineEntry {
        TimelineEntry {
            sequence: 1,
            event_type: "CustomerDeleted".to_owned(),
            occurred_at: at(happened),
            recorded_at: Some(at(learned)),
            stripe_event_id: Some(stripe_event_id.to_owned()),
            stripe_event_type: Some("customer.deleted".to_owned()),
            actor: None,
            drift: None,
            event: CustomerEvent::CustomerDeleted {
                occurred_at: at(happened),
            },
        }
    }

    #[test]
    fn a_late_fact_is_drawn_further_right_on_the_subledger_lane() {
        let picture = TimelinePicture::draw(
            &[entry(0, 0, "evt_on_time"), entry(1, 10, "evt_late")],
            &[],
            at(10),
        );
        let on_time = &picture.marks[0];
        let late = &picture.marks[1];
        assert_eq!(on_time.stripe_x, on_time.known_x);
        assert_eq!(on_time.stripe_x, "150.0");
        assert_eq!(late.known_x, "936.0");
        let late_x: f64 = late.stripe_x.parse().unwrap();
        assert!((228.0..230.0).contains(&late_x), "{late_x}");
        assert!(late.label.contains("evt_late"), "{}", late.label);
        assert!(late.label.contains("9 h later"), "{}", late.label);
        assert!(
            picture.description.starts_with("2 facts"),
            "{}",
            picture.description
        );
        assert!(picture
            .description
            .contains("1 learned more than five minutes"));
    }

    #[test]
    fn dunning_that_has_not_ended_is_shaded_up_to_now() {
        let spans = [
            DunningSpan {
                state: DunningState::PastDue,
                from: at(2),
                until: Some(at(4)),
            },
            DunningSpan {
                state: DunningState::Suspended,
                from: at(4),
                until: None,
            },
        ];
        let picture = TimelinePicture::draw(&[entry(0, 0, "evt_1")], &spans, at(8));
        let [grace, suspended] = &picture.shades[..] else {
            panic!("two shades expected");
        };
        assert_eq!((grace.state, suspended.state), ("past_due", "suspended"));
        assert_eq!(grace.x, "346.5");
        assert_eq!(
            suspended.x,
            grace
                .x
                .parse::<f64>()
                .map(|x| x + 196.5)
                .map(coordinate)
                .unwrap()
        );
        assert_eq!(suspended.width, "393.0");
        assert!(suspended
            .label
            .starts_with("Suspended since 2026-11-02 04:00"));
        assert_eq!(
            picture.ticks.first().map(|t| t.label.as_str()),
            Some("11-02 00:00")
        );
    }

    #[test]
    fn nothing_to_draw_says_so() {
        let picture = TimelinePicture::draw(&[], &[], at(0));
        assert!(picture.marks.is_empty() && picture.ticks.is_empty());
        assert_eq!(
            picture.description,
            "Nothing has happened to this customer yet."
        );
    }
}
