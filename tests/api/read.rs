use highwater::pb::{self, Direction};
use tonic::Code;

use crate::helpers::*;

fn positions(events: &[pb::RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

async fn seed(app: &mut TestApp) {
    // Positions 1..=10: "a" gets revisions 0..=5 at odd-ish positions, "b" the rest.
    for i in 0..10 {
        let stream = if i % 2 == 0 || i == 9 { "a" } else { "b" };
        app.append(append_request(
            stream,
            None,
            vec![json_event("E", &i.to_string())],
        ))
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn read_stream_forwards_backwards_and_limited() {
    let mut app = TestApp::spawn().await;
    seed(&mut app).await;

    let forwards = app
        .read_stream("a", 0, Direction::Forwards, 0)
        .await
        .unwrap();
    assert_eq!(revisions(&forwards), [0, 1, 2, 3, 4, 5]);
    assert_eq!(positions(&forwards), [1, 3, 5, 7, 9, 10]);
    assert_eq!(forwards[5].data.as_ref(), b"9");

    let from_two = app
        .read_stream("a", 2, Direction::Forwards, 3)
        .await
        .unwrap();
    assert_eq!(revisions(&from_two), [2, 3, 4]);

    let from_end = app
        .read_stream("a", u64::MAX, Direction::Backwards, 0)
        .await
        .unwrap();
    assert_eq!(revisions(&from_end), [5, 4, 3, 2, 1, 0]);
    let last = app
        .read_stream("a", u64::MAX, Direction::Backwards, 1)
        .await
        .unwrap();
    assert_eq!(positions(&last), [10]);
    let from_three = app
        .read_stream("a", 3, Direction::Backwards, 2)
        .await
        .unwrap();
    assert_eq!(revisions(&from_three), [3, 2]);

    let past_end = app
        .read_stream("a", 6, Direction::Forwards, 0)
        .await
        .unwrap();
    assert!(past_end.is_empty());
}

#[tokio::test]
async fn reading_a_missing_stream_is_not_found() {
    let mut app = TestApp::spawn().await;
    seed(&mut app).await;
    let status = app
        .read_stream("nope", 0, Direction::Forwards, 0)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("nope"), "{}", status.message());
    let status = app
        .read_stream("", 0, Direction::Forwards, 0)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn read_all_forwards_backwards_and_the_last_event_in_one_call() {
    let mut app = TestApp::spawn().await;
    seed(&mut app).await;
    let client = &mut app.client;

    let all = read_all_from(client, 0, Direction::Forwards, 0)
        .await
        .unwrap();
    assert_eq!(positions(&all), (1..=10).collect::<Vec<_>>());
    let after_seven = read_all_from(client, 7, Direction::Forwards, 0)
        .await
        .unwrap();
    assert_eq!(positions(&after_seven), [8, 9, 10]);
    let limited = read_all_from(client, 2, Direction::Forwards, 4)
        .await
        .unwrap();
    assert_eq!(positions(&limited), [3, 4, 5, 6]);

    let last = read_all_from(client, u64::MAX, Direction::Backwards, 1)
        .await
        .unwrap();
    assert_eq!(positions(&last), [10]);
    let backwards = read_all_from(client, 4, Direction::Backwards, 0)
        .await
        .unwrap();
    assert_eq!(positions(&backwards), [4, 3, 2, 1]);
    let past_end = read_all_from(client, 10, Direction::Forwards, 0)
        .await
        .unwrap();
    assert!(past_end.is_empty());
    let below_start = read_all_from(client, 0, Direction::Backwards, 0)
        .await
        .unwrap();
    assert!(below_start.is_empty());
}

#[tokio::test]
async fn streams_larger_than_a_page_read_completely_in_order() {
    let mut app = TestApp::spawn().await;
    // 2,500 events: more than two pages of rows.
    for batch in 0..5u64 {
        let events = (0..500)
            .map(|i| json_event("E", &(batch * 500 + i).to_string()))
            .collect();
        app.append(append_request("long", None, events))
            .await
            .unwrap();
    }
    let forwards = app
        .read_stream("long", 0, Direction::Forwards, 0)
        .await
        .unwrap();
    assert_eq!(revisions(&forwards), (0..2500).collect::<Vec<_>>());
    assert!(
        forwards
            .iter()
            .enumerate()
            .all(|(i, e)| e.data.as_ref() == i.to_string().as_bytes())
    );
    let backwards = app
        .read_stream("long", u64::MAX, Direction::Backwards, 0)
        .await
        .unwrap();
    assert_eq!(revisions(&backwards), (0..2500).rev().collect::<Vec<_>>());
    let all = app.read_all().await;
    assert_eq!(positions(&all), (1..=2500).collect::<Vec<_>>());

    // Twelve events of 900 KB: more than one page of bytes.
    for _ in 0..12 {
        let mut event = json_event("Big", "");
        event.content_type = "application/octet-stream".into();
        event.data = vec![b'x'; 900_000].into();
        app.append(append_request("big", None, vec![event]))
            .await
            .unwrap();
    }
    let big = app
        .read_stream("big", 0, Direction::Forwards, 0)
        .await
        .unwrap();
    assert_eq!(revisions(&big), (0..12).collect::<Vec<_>>());
    assert!(big.iter().all(|e| e.data.len() == 900_000));
    let big_backwards = read_all_from(&mut app.client, u64::MAX, Direction::Backwards, 13)
        .await
        .unwrap();
    assert_eq!(
        positions(&big_backwards),
        (2500..=2512).rev().collect::<Vec<_>>()
    );
}

/// A read page is bounded by every byte it sends, metadata included: with events whose data is
/// tiny and whose metadata is large, a page stops once it reaches `PAGE_BYTES` (before, only
/// data counted, and one page held all of them).
#[tokio::test]
async fn a_read_page_counts_metadata_towards_its_byte_bound() {
    use highwater_core::store::{
        model::Direction,
        reader::{PAGE_BYTES, ReadCursor},
    };

    let mut app = TestApp::spawn().await;
    let big = "m".repeat(700 * 1024);
    let events: Vec<pb::ProposedEvent> = (0..12)
        .map(|_| {
            let mut event = json_event("Tagged", "{}");
            event.metadata.insert("note".into(), big.clone());
            event
        })
        .collect();
    app.append(append_request("tagged", None, events))
        .await
        .unwrap();

    let pool = sqlx::PgPool::connect(&app.database.url).await.unwrap();
    let mut cursor = ReadCursor::all(pool, 0, Direction::Forwards, 0);
    let mut pages = Vec::new();
    loop {
        let page = cursor.next_page().await.unwrap();
        if page.is_empty() {
            break;
        }
        pages.push(page);
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 12);
    for page in &pages {
        let bytes = |e: &highwater_core::store::model::RecordedEvent| {
            e.data.len()
                + serde_json::to_string(&e.metadata).unwrap().len()
                + e.stream.len()
                + e.event_type.len()
                + e.content_type.len()
        };
        let before_last: usize = page[..page.len() - 1].iter().map(bytes).sum();
        assert!(
            before_last < PAGE_BYTES as usize,
            "a page of {} events starts its last event at byte {before_last}; pages {sizes:?}",
            page.len()
        );
    }
    assert!(pages.len() >= 2, "pages {sizes:?}");
}
