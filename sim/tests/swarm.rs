//! Whole-run properties of the simulator on small swarms (debug builds, well under a second
//! each): everyone completes, the origin serves at least one copy, a seed reproduces its run,
//! and a lone agent is bound by its link exactly.

use std::time::Duration;

use shoal_sim::{HandoutPolicy, SimConfig, simulate};

fn small(peers: u32, seed: u64) -> SimConfig {
    SimConfig {
        peers,
        blob_size: 20_000_000,
        piece_length: Some(256 * 1024),
        peer_upload: 50e6,
        peer_download: 50e6,
        origins: 2,
        origin_upload: 200e6,
        latency: Duration::from_millis(1),
        seed,
        ..SimConfig::default()
    }
}

#[test]
fn a_small_swarm_completes_and_the_origins_serve_at_least_one_copy() {
    for policy in [HandoutPolicy::OriginsFirst, HandoutPolicy::Random] {
        let mut config = small(40, 3);
        config.tracker.policy = policy;
        let report = simulate(config).expect("valid config");
        assert_eq!(report.complete, 40, "{policy:?}: {report}");
        assert!(
            report.origin_egress_bytes >= 20_000_000,
            "{policy:?}: someone must fetch the blob from an origin: {report}"
        );
        let seconds = report.seconds.expect("completions");
        // No agent beats its own link.
        assert!(seconds.p50 >= report.link_limit, "{report}");
        // Agents got most pieces from each other: far less than one copy per agent.
        assert!(report.origin_egress_ratio < 20.0, "{report}");
    }
}

#[test]
fn staggered_arrivals_complete_too() {
    let mut config = small(30, 5);
    config.arrival_spread = Duration::from_secs(2);
    let report = simulate(config).expect("valid config");
    assert_eq!(report.complete, 30, "{report}");
}

#[test]
fn a_seed_reproduces_its_run_and_another_seed_differs() {
    let run = |seed| {
        let report = simulate(small(25, seed)).expect("valid config");
        (report.seconds, report.origin_egress_bytes, report.events)
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

fn lone(latency: Duration) -> SimConfig {
    SimConfig {
        peers: 1,
        blob_size: 50_000_000,
        peer_upload: 100e6,
        peer_download: 100e6,
        origins: 1,
        origin_upload: 1e9,
        latency,
        ..SimConfig::default()
    }
}

#[test]
fn a_lone_agent_downloads_from_one_origin_at_its_link_rate() {
    let report = simulate(lone(Duration::ZERO)).expect("valid config");
    let seconds = report.seconds.expect("it completes").max;
    assert!(
        (0.5..0.5 * 1.001).contains(&seconds),
        "took {seconds} s for S/B = 0.5 s"
    );
    assert_eq!(report.origin_egress_bytes, 50_000_000, "exactly one copy");
}

#[test]
fn a_lone_agents_client_reads_along_and_finishes_one_piece_after_the_download() {
    // A lone agent takes its pieces in order, so a client reading at 10 × the link only ever
    // waits for the next piece: it ends one piece's reading (2.6 ms) after the last one lands.
    let mut config = lone(Duration::ZERO);
    config.client_rate = Some(1e9);
    let report = simulate(config).expect("valid config");
    let done = report.seconds.expect("it completes").max;
    let read = report.read.expect("a client was modelled").max;
    let last_piece = 262_144.0 / 1e9;
    assert!(
        read >= done && read - done <= last_piece * 1.1,
        "download done at {done} s, client at {read} s"
    );
    // Without a client rate nothing is read.
    let report = simulate(lone(Duration::ZERO)).expect("valid config");
    assert_eq!(report.read, None);
}

#[test]
fn latency_costs_a_lone_agent_one_latency_per_pipeline_round() {
    // 191 pieces of 256 KiB, 4 in flight sharing the link finish together every ~10.5 ms; the
    // link then idles for the 1 ms the PieceDone takes (the model folds the request's own trip
    // into it) before the next requests' bytes flow. A 1 ms answer is 40 % of a piece, so the
    // depth goes to its bound of 4 once measured (two rounds of 2 before that).
    let mut config = lone(Duration::from_millis(1));
    config.scheduler.max_pipeline = 4;
    let report = simulate(config).expect("valid config");
    let seconds = report.seconds.expect("it completes").max;
    let rounds = 191.0_f64 / 4.0;
    let expected = 0.5 + rounds * 0.001;
    assert!(
        (seconds - expected).abs() < 0.02,
        "took {seconds} s, expected about {expected} s"
    );
}

#[test]
fn in_order_a_lone_agents_link_never_idles_for_the_latency() {
    // Over the piece stream the origin sends a downloader's pieces one after the other: the
    // next request (two in flight: one more than a 1 ms round trip's worth of 2.6 ms pieces)
    // is there before the piece ahead of it ends, so the link stays busy: only the start (the
    // connection and first round trip) and the last piece's latency are added, 5 ms, where
    // HTTP/2's shared pipe idles a latency per round (above: 0.548 s).
    let mut config = lone(Duration::from_millis(1));
    config.in_order = true;
    let report = simulate(config).expect("valid config");
    let seconds = report.seconds.expect("it completes").max;
    assert!(
        (0.5..0.5 + 0.01).contains(&seconds),
        "took {seconds} s for S/B = 0.5 s"
    );
    assert_eq!(report.origin_egress_bytes, 50_000_000, "exactly one copy");
}

#[test]
fn in_order_a_small_swarm_completes_and_a_seed_reproduces_its_run() {
    let run = |seed| {
        let mut config = small(40, seed);
        config.in_order = true;
        simulate(config).expect("valid config")
    };
    let report = run(3);
    assert_eq!(report.complete, 40, "{report}");
    let seconds = report.seconds.expect("completions");
    assert!(seconds.p50 >= report.link_limit, "{report}");
    assert!(report.origin_egress_ratio < 20.0, "{report}");
    let again = run(3);
    assert_eq!(
        (again.seconds, again.origin_egress_bytes, again.events),
        (report.seconds, report.origin_egress_bytes, report.events)
    );
}

#[test]
fn a_slow_origin_bounds_a_lone_agent() {
    let config = SimConfig {
        peers: 1,
        blob_size: 10_000_000,
        peer_download: 100e6,
        origins: 1,
        origin_upload: 10e6,
        latency: Duration::ZERO,
        ..SimConfig::default()
    };
    let report = simulate(config).expect("valid config");
    let seconds = report.seconds.expect("it completes").max;
    assert!(
        (1.0..1.001).contains(&seconds),
        "took {seconds} s at 10 MB/s"
    );
}

#[test]
fn invalid_parameters_are_refused() {
    let mut config = small(1, 1);
    config.peer_download = 0.0;
    assert!(simulate(config).is_err());
    let mut config = small(1, 1);
    config.origins = 0;
    assert!(simulate(config).is_err());
}

#[test]
fn a_lone_agent_within_the_origins_upload_slots_never_hears_busy() {
    let report = simulate(lone(Duration::ZERO)).expect("valid config");
    assert_eq!(
        report.busy_from_origins + report.busy_from_agents,
        0,
        "{report}"
    );
}

#[test]
fn a_crowd_beyond_the_origins_upload_slots_hears_busy_and_everyone_completes() {
    let mut config = small(40, 3);
    config.origin_upload_slots = 2;
    let report = simulate(config).expect("valid config");
    assert_eq!(report.complete, 40, "{report}");
    assert!(report.busy_from_origins > 0, "{report}");
}

#[test]
fn the_uplink_meter_accounts_for_every_byte_the_agents_upload() {
    let config = small(40, 3);
    let (peers, blob, upload) = (40.0, config.blob_size as f64, config.peer_upload);
    let report = simulate(config).expect("valid config");
    let uplinks = &report.uplinks;
    // One share per second of virtual time, the last one partial.
    assert_eq!(
        uplinks.per_second.len(),
        report.virtual_seconds.ceil() as usize,
        "{report}"
    );
    let mut uploaded = 0.0;
    for (second, share) in uplinks.per_second.iter().enumerate() {
        assert!((0.0..=1.0).contains(share), "{report}");
        let length = (report.virtual_seconds - second as f64).min(1.0);
        uploaded += share * peers * upload * length;
    }
    assert!(
        (uploaded - uplinks.bytes).abs() < 1.0,
        "the shares add up to {uploaded} bytes, the agents uploaded {}: {report}",
        uplinks.bytes
    );
    // Whatever the agents got beyond the origins' bytes came from each other (cancelled
    // endgame duplicates add a little).
    let from_agents = peers * blob - report.origin_egress_bytes as f64;
    assert!(
        (from_agents..from_agents * 1.05).contains(&uplinks.bytes),
        "the agents uploaded {} bytes and got {from_agents} from each other: {report}",
        uplinks.bytes
    );
    let before = uplinks.before_first_complete.expect("agents completed");
    assert!(before > 0.0 && before < 1.0, "{report}");
}

#[test]
fn a_lone_agents_uplink_is_metered_idle() {
    let report = simulate(lone(Duration::ZERO)).expect("valid config");
    assert_eq!(report.uplinks.before_first_complete, Some(0.0), "{report}");
    assert_eq!(report.uplinks.per_second, vec![0.0], "{report}");
}

#[test]
fn agents_bound_their_copies_of_a_piece_and_everyone_completes() {
    let mut config = small(40, 3);
    config.piece_copies = Some(1);
    let report = simulate(config.clone()).expect("valid config");
    assert_eq!(report.complete, 40, "{report}");
    assert!(report.elsewhere_from_agents > 0, "{report}");
    config.piece_copies = None;
    let report = simulate(config.clone()).expect("valid config");
    assert_eq!(report.elsewhere_from_agents, 0, "{report}");
    config.piece_copies = Some(0);
    assert!(
        simulate(config).is_err(),
        "a bound of no copies serves nothing"
    );
}
