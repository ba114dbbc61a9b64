//! Churn on a small swarm (debug builds, a few seconds): agents leaving mid-download and on
//! completion, agents hanging mid-download, late joiners and an origin dying or hanging; every
//! agent that stays completes, and a departed agent is handed out only until its tracker record
//! expires.

use std::time::Duration;

use shoal_sim::{Churn, ChurnReport, Gone, OriginStop, SimConfig, simulate};

fn churning(peers: u32, churn: Churn) -> SimConfig {
    SimConfig {
        peers,
        blob_size: 20_000_000,
        piece_length: Some(256 * 1024),
        peer_upload: 50e6,
        peer_download: 50e6,
        origins: 3,
        origin_upload: 200e6,
        latency: Duration::from_millis(1),
        churn,
        seed: 11,
        ..SimConfig::default()
    }
}

#[test]
fn every_agent_that_stays_completes_through_leavers_late_joiners_and_a_dead_origin() {
    let config = churning(
        200,
        Churn {
            leave_downloading: 0.2,
            leave_complete: 0.1,
            hang_downloading: 0.0,
            late_join: 0.2,
            late_window: Duration::from_secs(2),
            origin_stops: Some(OriginStop {
                at: 0.5,
                how: Gone::Exited,
            }),
        },
    );
    let report = simulate(config).expect("valid config");
    let churn = &report.churn;
    assert_eq!(churn.left_downloading, 40, "{report}");
    assert_eq!(churn.left_complete, 20, "{report}");
    assert_eq!(churn.late_joiners, 40, "{report}");
    assert_eq!(report.stayed, 160, "{report}");
    assert!(report.every_stayer_complete, "{report}");
    assert_eq!(report.complete, 160, "{report}");
    // Nobody stalled on a departed node or the dead origin: the slowest agent that stayed took
    // less than one piece timeout (15 s) of virtual time.
    let slowest = report.seconds.expect("completions").max;
    assert!(slowest < 15.0, "{report}");
    let (died, _) = churn.origin_stopped.expect("the origin died");
    assert!(
        died < report.virtual_seconds,
        "it died before the end: {report}"
    );
    // The leavers' peers noticed: their sessions dropped, pieces in flight from them failed,
    // and the tracker kept handing them out for a while, so connects to them failed.
    assert!(churn.disconnects > 0, "{report}");
    assert!(churn.failed_requests > 0, "{report}");
    assert!(churn.connect_failures > 0, "{report}");
}

#[test]
fn a_dead_origin_alone_stalls_nobody() {
    let config = churning(
        60,
        Churn {
            origin_stops: Some(OriginStop {
                at: 0.5,
                how: Gone::Exited,
            }),
            ..Churn::default()
        },
    );
    let report = simulate(config).expect("valid config");
    assert!(report.churn.origin_stopped.is_some(), "{report}");
    assert_eq!(report.complete, 60, "{report}");
    // Nothing dropped a session: an origin is a complete peer, whose session just goes quiet.
    assert_eq!(report.churn.disconnects, 0, "{report}");
}

#[test]
fn a_hung_origin_stalls_nobody() {
    // It hangs early, while the agents still need the origins: its sessions stand, requests to
    // it go unanswered, handshakes with it time out, and the tracker keeps handing it out.
    for at in [0.05, 0.5] {
        let config = churning(
            60,
            Churn {
                origin_stops: Some(OriginStop {
                    at,
                    how: Gone::Hung,
                }),
                ..Churn::default()
            },
        );
        let report = simulate(config).expect("valid config");
        assert!(
            matches!(report.churn.origin_stopped, Some((_, Gone::Hung))),
            "{report}"
        );
        assert_eq!(report.complete, 60, "{report}");
        // Nobody waited out a piece timeout (15 s of virtual time) on it.
        let slowest = report.seconds.expect("completions").max;
        assert!(slowest < 15.0, "hanging at {at}: {report}");
    }
}

#[test]
fn a_run_without_churn_reports_none() {
    let report = simulate(churning(20, Churn::default())).expect("valid config");
    assert_eq!(report.churn, ChurnReport::default());
    assert_eq!(report.stale_requests, 0, "{report}");
    assert_eq!((report.stayed, report.complete), (20, 20));
    assert!(report.every_stayer_complete);
}

#[test]
fn the_tracker_stops_handing_out_a_departed_agent_when_its_record_expires() {
    // Slow links (S/B = 4 s) and joiners arriving over 12 s: many announce after leavers left.
    let failed_connects = |peer_ttl: Duration| {
        let mut config = churning(
            100,
            Churn {
                leave_downloading: 0.3,
                late_join: 0.5,
                late_window: Duration::from_secs(12),
                ..Churn::default()
            },
        );
        config.peer_upload = 5e6;
        config.peer_download = 5e6;
        config.tracker.peer_ttl = peer_ttl;
        let report = simulate(config).expect("valid config");
        assert!(report.every_stayer_complete, "{report}");
        report.churn.connect_failures
    };
    let expiring = failed_connects(Duration::from_millis(3500));
    let lingering = failed_connects(Duration::from_secs(600));
    assert!(
        expiring < lingering,
        "{expiring} failed connects with a 3.5 s TTL, {lingering} with 600 s"
    );
}

#[test]
fn every_agent_that_does_not_hang_completes_beside_agents_that_hang_mid_download() {
    // Slow links (S/B = 4 s): requests to the hung agents go stale (2 s at least) well before
    // the piece timeout (15 s) and before the downloads would end.
    let mut config = churning(
        100,
        Churn {
            hang_downloading: 0.1,
            ..Churn::default()
        },
    );
    config.peer_upload = 5e6;
    config.peer_download = 5e6;
    let report = simulate(config).expect("valid config");
    assert_eq!(report.churn.hung_downloading, 10, "{report}");
    assert_eq!(report.stayed, 90, "{report}");
    assert!(report.every_stayer_complete, "{report}");
    // A hung agent's sessions stand: nobody saw one drop, nor a request fail at once.
    assert_eq!(report.churn.disconnects, 0, "{report}");
    assert_eq!(report.churn.failed_requests, 0, "{report}");
    // Requests in flight at a hung agent went stale and their pieces were asked of others:
    // nobody waited out the piece timeout.
    assert!(report.stale_requests > 0, "{report}");
    let slowest = report.seconds.expect("completions").max;
    assert!(slowest < 15.0, "{report}");
}
