//! The burn-down chart: a stream's remaining balance over the last day, week or month from the
//! index's per-stream history, the projection to depletion, and top-ups, pauses and rate
//! changes marked — rendered to SVG on the server with `plotters` (no fonts needed: its
//! built-in text metrics), so the page loads nothing from elsewhere.

use plotters::prelude::*;
use settled_streams::{NEVER_DEPLETES, StreamIndex, StreamState};

use crate::data::units;

/// The chart's time range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The last 24 hours.
    Day,
    /// The last 7 days.
    Week,
    /// The last 30 days.
    Month,
}

impl Range {
    /// From a query value (`day`, `week`, `month`).
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "day" => Some(Self::Day),
            "week" => Some(Self::Week),
            "month" => Some(Self::Month),
            _ => None,
        }
    }

    fn seconds(self) -> u64 {
        match self {
            Self::Day => 86_400,
            Self::Week => 7 * 86_400,
            Self::Month => 30 * 86_400,
        }
    }
}

/// A change worth a marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    TopUp,
    Pause,
    Resume,
    RateChange,
}

/// The remaining balance through time: `(second, base units)` points, markers, and the
/// projection from now.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct BurnDown {
    pub(crate) points: Vec<(u64, u128)>,
    pub(crate) events: Vec<(u64, u128, Event)>,
    pub(crate) projection: Vec<(u64, u128)>,
}

/// Where the remaining balance of a stream in state `state` from `from` reaches zero before
/// `to`, if it does.
fn depletes_within(state: &StreamState, from: u64, to: u64) -> Option<u64> {
    let at = state.depletion_time(from);
    (at != NEVER_DEPLETES && at > from && at < to).then_some(at)
}

/// Stream `id`'s burn-down over `range` up to `now`.
pub(crate) async fn burn_down(
    index: &StreamIndex,
    id: u64,
    now: u64,
    range: Range,
) -> Result<BurnDown, String> {
    let error = |e: settled_streams::IndexError| e.to_string();
    let start = now.saturating_sub(range.seconds());
    let changes = index.changes_between(id, start, now).await.map_err(error)?;
    let mut chart = BurnDown::default();
    let mut state = index.get_at(id, start).await.map_err(error)?;
    let mut at = start;
    if let Some(s) = &state {
        chart.points.push((start, s.refundable(start)));
    }
    for (t, next) in changes {
        if let Some(prev) = &state {
            if let Some(zero) = depletes_within(prev, at, t) {
                chart.points.push((zero, 0));
            }
            chart.points.push((t, prev.refundable(t)));
            if let Some(event) = event_between(prev, &next) {
                chart.events.push((t, next.refundable(t), event));
            }
        }
        chart.points.push((t, next.refundable(t)));
        state = Some(next);
        at = t;
    }
    let Some(last) = state else { return Ok(chart) };
    if let Some(zero) = depletes_within(&last, at, now) {
        chart.points.push((zero, 0));
    }
    chart.points.push((now, last.refundable(now)));
    let horizon = now + range.seconds() / 2;
    let end = depletes_within(&last, now, horizon).unwrap_or(horizon);
    if !last.paused && !last.closed && last.refundable(now) > 0 {
        chart.projection = vec![(now, last.refundable(now)), (end, last.refundable(end))];
    }
    Ok(chart)
}

fn event_between(prev: &StreamState, next: &StreamState) -> Option<Event> {
    if next.balance > prev.balance {
        Some(Event::TopUp)
    } else if next.paused && !prev.paused {
        Some(Event::Pause)
    } else if !next.paused && prev.paused {
        Some(Event::Resume)
    } else if next.rate_per_second != prev.rate_per_second {
        Some(Event::RateChange)
    } else {
        None
    }
}

/// `chart` as an SVG document, amounts in units of `decimals`.
pub(crate) fn render(chart: &BurnDown, decimals: u8, title: &str) -> Result<String, String> {
    let mut svg = String::new();
    draw(&mut svg, chart, decimals, title).map_err(|e| e.to_string())?;
    Ok(svg)
}

fn draw(
    svg: &mut String,
    chart: &BurnDown,
    decimals: u8,
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, (640, 300)).into_drawing_area();
    root.fill(&WHITE)?;
    let all = chart.points.iter().chain(&chart.projection);
    let x0 = all.clone().map(|p| p.0).min().unwrap_or(0) as i64;
    let x1 = (all.clone().map(|p| p.0).max().unwrap_or(1) as i64).max(x0 + 1);
    let top = all.map(|p| units(p.1, decimals)).fold(0.0, f64::max).max(1e-6) * 1.1;
    let mut plot = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, 0f64..top)?;
    let span = x1 - x0;
    plot.configure_mesh()
        .x_labels(5)
        .x_label_formatter(&|x| clock(*x, span))
        .y_desc("remaining")
        .draw()?;
    let line = |points: &[(u64, u128)]| -> Vec<(i64, f64)> {
        points.iter().map(|(t, v)| (*t as i64, units(*v, decimals))).collect()
    };
    plot.draw_series(LineSeries::new(line(&chart.points), BLUE.stroke_width(2)))?
        .label("balance")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    if !chart.projection.is_empty() {
        plot.draw_series(DashedLineSeries::new(
            line(&chart.projection),
            6,
            4,
            RED.stroke_width(2),
        ))?
        .label("projection")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    }
    for (kind, color, label) in [
        (Event::TopUp, GREEN, "top-up"),
        (Event::Pause, RGBColor(230, 140, 0), "pause"),
        (Event::Resume, CYAN, "resume"),
        (Event::RateChange, MAGENTA, "rate change"),
    ] {
        let marks: Vec<_> = chart.events.iter().filter(|e| e.2 == kind).collect();
        if marks.is_empty() {
            continue;
        }
        let points = marks.into_iter().map(|(t, v, _)| (*t as i64, units(*v, decimals)));
        plot.draw_series(points.map(|p| Circle::new(p, 5, color.filled())))?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
    }
    plot.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// A unix second as `HH:MM` (UTC) within two days, else `MM-DD`.
fn clock(second: i64, span: i64) -> String {
    let days = second.div_euclid(86_400);
    let (hour, minute) = (second.rem_euclid(86_400) / 3_600, second.rem_euclid(3_600) / 60);
    if span <= 2 * 86_400 {
        return format!("{hour:02}:{minute:02}");
    }
    let (_, month, day) = civil_from_days(days);
    format!("{month:02}-{day:02}")
}

/// Howard Hinnant's days-to-civil (proleptic Gregorian, UTC).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_423), (2025, 12, 1));
        assert_eq!(clock(1_764_547_200 + 3_660, 3_600), "01:01");
        assert_eq!(clock(1_764_547_200, 30 * 86_400), "12-01");
    }

    #[test]
    fn a_chart_renders_to_svg() -> Result<(), String> {
        let chart = BurnDown {
            points: vec![(0, 1_000_000), (600, 400_000), (600, 2_400_000), (1_200, 1_800_000)],
            events: vec![(600, 2_400_000, Event::TopUp)],
            projection: vec![(1_200, 1_800_000), (3_000, 0)],
        };
        let svg = render(&chart, 6, "stream 1")?;
        assert!(svg.starts_with("<svg") && svg.contains("top-up") && svg.contains("projection"));
        assert!(svg.contains("<polyline") && svg.contains("<circle"), "the line and the marker");
        Ok(())
    }
}
