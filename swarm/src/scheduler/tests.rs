//! Scheduler tests driven through the [`Sim`] harness (which checks the policy's invariants on
//! every action) or, where exact action lists matter, through `handle` directly.

use std::collections::{BTreeSet, VecDeque};

use proptest::prelude::*;

use super::sim::{Behaviour, Sim, bits, id};
use super::*;

/// The small swarms below are worked out for 8 peers of at most 4 requests each, whatever the
/// defaults.
fn config() -> SchedulerConfig {
    SchedulerConfig {
        max_peers: 8,
        max_pipeline: 4,
        ..SchedulerConfig::default()
    }
}

/// Room for the measured depth to grow past what the tests ask of it.
fn config_deep() -> SchedulerConfig {
    SchedulerConfig {
        max_pipeline: 16,
        ..config()
    }
}

#[test]
fn completes_from_agents_holding_different_parts() {
    let mut sim = Sim::new(40, Bitfield::new(40), config(), 1);
    sim.peer("a", bits(40, 0..20), false, Behaviour::Honest);
    sim.peer("b", bits(40, 15..35), false, Behaviour::Honest);
    sim.peer("c", bits(40, 30..40), false, Behaviour::Honest);
    sim.discover();
    assert!(sim.run(10_000), "stalled at {:?}", sim.scheduler.have());
    assert!(sim.scheduler.have().is_complete());
    let requested: BTreeSet<u32> = sim.requests().map(|(_, piece)| piece).collect();
    assert_eq!(requested, (0..40).collect());
    let last = sim.log.last().map(|(_, action)| action.clone());
    assert!(matches!(last, Some(Action::Disconnect { .. })), "{last:?}");
}

#[test]
fn pieces_on_disk_are_never_requested() {
    let have = bits(20, (0..20).filter(|piece| piece % 3 == 0));
    let mut sim = Sim::new(20, have.clone(), config(), 2);
    sim.peer("a", Bitfield::full(20), false, Behaviour::Honest);
    sim.discover();
    assert!(sim.run(1_000));
    let requested: BTreeSet<u32> = sim.requests_to("a").into_iter().collect();
    assert_eq!(requested, have.zeros().collect());
}

#[test]
fn a_complete_download_completes_on_its_first_event() {
    let mut scheduler = Scheduler::new(3, Bitfield::full(3), config(), 3);
    assert_eq!(scheduler.handle(0, Event::Tick), vec![Action::Complete]);
    assert_eq!(scheduler.handle(1, Event::Tick), vec![]);
    let empty = Scheduler::new(0, Bitfield::new(0), config(), 3).handle(0, Event::Tick);
    assert_eq!(empty, vec![Action::Complete]);
}

#[test]
fn the_rarest_piece_is_requested_first() {
    let config = SchedulerConfig {
        max_pipeline: 1,
        ..config()
    };
    let mut sim = Sim::new(64, Bitfield::new(64), config, 4);
    // Neither holds the pieces a streaming reader needs next (`STREAM_AHEAD`, asked in order):
    // what follows is picked by rarity alone. Piece 57 is held by `a` only.
    sim.peer("a", bits(64, 16..64), false, Behaviour::Honest);
    sim.peer(
        "b",
        bits(64, (16..64).filter(|&p| p != 57)),
        false,
        Behaviour::Honest,
    );
    sim.send(Event::Discovered(vec![PeerCandidate {
        id: id("b"),
        origin: false,
    }]));
    sim.step();
    sim.send(Event::Discovered(vec![PeerCandidate {
        id: id("a"),
        origin: false,
    }]));
    sim.step();
    assert_eq!(sim.requests_to("a"), vec![57]);
}

#[test]
fn ties_are_broken_by_the_seed() {
    let first_request = |seed| {
        // An agent still downloading (a complete one would be asked in order), holding none of
        // the pieces a streaming reader needs next (`STREAM_AHEAD`, asked in order).
        let mut sim = Sim::new(64, Bitfield::new(64), config(), seed);
        sim.peer("a", bits(64, 16..63), false, Behaviour::Honest);
        sim.discover();
        sim.step();
        sim.requests_to("a")
    };
    assert_eq!(first_request(7), first_request(7));
    let distinct: BTreeSet<Vec<u32>> = (0..10).map(first_request).collect();
    assert!(distinct.len() > 1, "every seed picked the same pieces");
}

#[test]
fn an_unmeasured_peer_gets_the_initial_depth() {
    let mut sim = Sim::new(30, Bitfield::new(30), config(), 5);
    sim.peer("a", Bitfield::full(30), false, Behaviour::Silent);
    sim.discover();
    sim.step();
    assert_eq!(sim.requests_to("a").len(), depth::INITIAL_DEPTH);
}

#[test]
fn endgame_duplicates_requests_then_cancels_the_losers() {
    let config = SchedulerConfig {
        max_pipeline: 2,
        ..config()
    };
    let mut sim = Sim::new(12, Bitfield::new(12), config, 6);
    sim.peer("fast", Bitfield::full(12), false, Behaviour::Honest);
    sim.peer("stuck", Bitfield::full(12), false, Behaviour::Silent);
    sim.discover();
    // No Tick happens before completion: the stuck peer's pieces come from endgame duplicates.
    while sim.completes == 0 {
        assert!(
            sim.events.len() + sim.pending.len() > 0 && sim.now < 1_000,
            "stalled"
        );
        sim.step();
    }
    let stuck = sim.requests_to("stuck");
    assert_eq!(stuck.len(), 2, "stuck got its pipeline's worth");
    let fast = sim.requests_to("fast");
    for piece in &stuck {
        assert!(fast.contains(piece), "piece {piece} was never duplicated");
    }
    let cancels: Vec<u32> = sim
        .log
        .iter()
        .filter_map(|(_, action)| match action {
            Action::Cancel { peer, piece } if peer.as_str() == "stuck" => Some(*piece),
            _ => None,
        })
        .collect();
    assert_eq!(cancels.len(), 2, "{:?}", sim.log);
}

#[test]
fn in_endgame_a_piece_is_asked_of_at_most_two_peers_at_once() {
    // Two pieces missing (endgame from the start) and six seeders that each hold both: every
    // seeder is idle and could duplicate, but each piece goes to two of them at most, so
    // the others' upload is not spent on copies that will be cancelled.
    let pieces = 2;
    let mut scheduler = Scheduler::new(pieces, Bitfield::new(pieces), config(), 34);
    let seeders: Vec<PeerId> = (0..6).map(|i| id(&format!("seeder-{i}"))).collect();
    let mut asked = vec![0; pieces as usize];
    for seeder in &seeders {
        for piece in requested(&connect(&mut scheduler, 1, seeder, false, pieces), seeder) {
            asked[piece as usize] += 1;
        }
    }
    let out = scheduler.handle(300, Event::Tick);
    for seeder in &seeders {
        for piece in requested(&out, seeder) {
            asked[piece as usize] += 1;
        }
    }
    assert_eq!(asked, [ENDGAME_COPIES, ENDGAME_COPIES], "{out:?}");
}

#[test]
fn a_corrupt_peer_is_blacklisted_until_expiry_and_the_download_completes() {
    let mut sim = Sim::new(30, Bitfield::new(30), config(), 8);
    sim.peer("good", Bitfield::full(30), false, Behaviour::Honest);
    sim.peer("evil", Bitfield::full(30), false, Behaviour::Corrupt);
    sim.discover();
    assert!(sim.run(1_000));
    let blacklists: Vec<(u64, PeerId, u64)> = sim
        .log
        .iter()
        .filter_map(|(now, action)| match action {
            Action::Blacklist { peer, until_ms } => Some((*now, peer.clone(), *until_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(blacklists.len(), 1, "{blacklists:?}");
    let (at, peer, until) = blacklists[0].clone();
    assert_eq!(peer, id("evil"));
    assert_eq!(until, at + 60_000);
    // The harness already checked that nothing went to `evil` after the blacklist; every piece
    // it was asked for before came from `good` in the end.
    assert!(sim.scheduler.have().is_complete());
    assert!(sim.scheduler.is_blacklisted(&peer, until - 1));
    assert!(!sim.scheduler.is_blacklisted(&peer, until));
}

#[test]
fn a_blacklisted_peer_is_reconnected_only_after_expiry() {
    let mut scheduler = Scheduler::new(100, Bitfield::new(100), config(), 9);
    let evil = PeerCandidate {
        id: id("evil"),
        origin: false,
    };
    scheduler.handle(0, Event::Discovered(vec![evil.clone()]));
    scheduler.handle(
        1,
        Event::Connected {
            peer: evil.id.clone(),
            bitfield: Bitfield::full(100),
        },
    );
    let actions = scheduler.handle(
        2,
        Event::PieceCorrupt {
            peer: evil.id.clone(),
            piece: 0,
        },
    );
    assert_eq!(
        actions,
        vec![Action::Blacklist {
            peer: evil.id.clone(),
            until_ms: 60_002
        }]
    );
    assert!(scheduler.is_blacklisted(&evil.id, 60_001));
    assert_eq!(
        scheduler.handle(30_000, Event::Discovered(vec![evil.clone()])),
        vec![]
    );
    assert_eq!(scheduler.handle(60_002, Event::Tick), vec![]);
    assert!(!scheduler.is_blacklisted(&evil.id, 60_002));
    assert_eq!(
        scheduler.handle(60_003, Event::Discovered(vec![evil.clone()])),
        vec![Action::Connect { peer: evil.id }]
    );
}

#[test]
fn a_timed_out_request_is_cancelled_and_reissued_to_another_peer() {
    let config = SchedulerConfig {
        max_pipeline: 1,
        endgame_pieces: 0,
        ..config()
    };
    let mut scheduler = Scheduler::new(3, Bitfield::new(3), config, 10);
    let (slow, fast) = (id("slow"), id("fast"));
    scheduler.handle(
        0,
        Event::Discovered(vec![PeerCandidate {
            id: slow.clone(),
            origin: false,
        }]),
    );
    let first = scheduler.handle(
        1,
        Event::Connected {
            peer: slow.clone(),
            bitfield: Bitfield::full(3),
        },
    );
    let [Action::Request { piece: stuck, .. }] = first[..] else {
        panic!("{first:?}");
    };
    scheduler.handle(
        2,
        Event::Discovered(vec![PeerCandidate {
            id: fast.clone(),
            origin: false,
        }]),
    );
    let second = scheduler.handle(
        3,
        Event::Connected {
            peer: fast.clone(),
            bitfield: Bitfield::full(3),
        },
    );
    let [Action::Request { piece: other, .. }] = second[..] else {
        panic!("{second:?}");
    };
    // Before the timeout nothing happens; at it the request is cancelled, `slow`'s free slot
    // takes the last unrequested piece, and `slow` is not asked for the timed-out piece again
    // while `fast` can serve it.
    assert_eq!(scheduler.handle(15_000, Event::Tick), vec![]);
    let last = (0..3)
        .find(|p| *p != stuck && *p != other)
        .expect("3 pieces");
    assert_eq!(
        scheduler.handle(15_001, Event::Tick),
        vec![
            Action::Cancel {
                peer: slow.clone(),
                piece: stuck
            },
            Action::Request {
                peer: slow.clone(),
                piece: last,
                insist: false,
            },
        ]
    );
    assert_eq!(
        scheduler.handle(
            15_002,
            Event::PieceDone {
                peer: fast.clone(),
                piece: other,
                rtt: Duration::ZERO,
                in_order: false,
            },
        ),
        vec![Action::Request {
            peer: fast,
            piece: stuck,
            insist: false,
        }]
    );
}

#[test]
fn useless_peers_are_swapped_for_waiting_ones() {
    let config = SchedulerConfig {
        max_peers: 2,
        ..config()
    };
    let mut sim = Sim::new(10, Bitfield::new(10), config, 18);
    sim.peer("empty-1", Bitfield::new(10), false, Behaviour::Honest);
    sim.peer("empty-2", Bitfield::new(10), false, Behaviour::Honest);
    sim.peer("empty-3", Bitfield::new(10), false, Behaviour::Honest);
    sim.discover();
    sim.step();
    sim.step();
    sim.peer("seeder", Bitfield::full(10), false, Behaviour::Honest);
    sim.discover();
    assert!(sim.run(1_000), "stalled behind useless peers");
}

#[test]
fn consecutive_failures_drop_the_peer() {
    let mut sim = Sim::new(20, Bitfield::new(20), config(), 11);
    sim.peer("broken", Bitfield::full(20), false, Behaviour::Silent);
    sim.peer("good", Bitfield::full(20), false, Behaviour::Honest);
    sim.discover();
    sim.step();
    sim.step();
    // Each failure frees a request the broken peer is given again, until the third in a row.
    for _ in 0..config().max_failures {
        let broken = sim
            .pending
            .iter()
            .position(|(peer, _)| peer.as_str() == "broken");
        if let Some(at) = broken {
            let (peer, piece) = sim.pending.remove(at);
            sim.send(Event::PieceFailed { peer, piece });
        }
    }
    let drops: Vec<&Action> = sim
        .log
        .iter()
        .map(|(_, action)| action)
        .filter(|action| matches!(action, Action::Disconnect { peer } if peer.as_str() == "broken"))
        .collect();
    assert_eq!(drops.len(), 1, "{:?}", sim.log);
    assert!(sim.pending.iter().all(|(peer, _)| peer.as_str() == "good"));
    assert!(sim.run(1_000));
}

#[test]
fn a_disconnected_peers_requests_are_reissued() {
    let mut sim = Sim::new(20, Bitfield::new(20), config(), 12);
    sim.peer("a", Bitfield::full(20), false, Behaviour::Honest);
    sim.peer("b", Bitfield::full(20), false, Behaviour::Honest);
    sim.discover();
    sim.step();
    sim.step();
    let lost: Vec<u32> = sim
        .pending
        .iter()
        .filter(|(peer, _)| peer.as_str() == "a")
        .map(|&(_, piece)| piece)
        .collect();
    assert_eq!(lost.len(), depth::INITIAL_DEPTH);
    sim.remove_peer("a");
    sim.send(Event::Disconnected { peer: id("a") });
    assert!(sim.run(1_000));
    let from_b = sim.requests_to("b");
    for piece in lost {
        assert!(
            from_b.contains(&piece),
            "lost piece {piece} never re-requested"
        );
    }
}

#[test]
fn unexpected_connections_are_closed_and_repeats_ignored() {
    let mut scheduler = Scheduler::new(4, Bitfield::new(4), config(), 19);
    let (stranger, known) = (id("stranger"), id("known"));
    let stray = scheduler.handle(
        0,
        Event::Connected {
            peer: stranger.clone(),
            bitfield: Bitfield::full(4),
        },
    );
    assert_eq!(stray, vec![Action::Disconnect { peer: stranger }]);
    scheduler.handle(
        1,
        Event::Discovered(vec![PeerCandidate {
            id: known.clone(),
            origin: false,
        }]),
    );
    let connected = Event::Connected {
        peer: known.clone(),
        bitfield: Bitfield::full(4),
    };
    assert_eq!(
        scheduler.handle(2, connected.clone()).len(),
        depth::INITIAL_DEPTH
    );
    assert_eq!(scheduler.handle(3, connected), vec![]);
    let mut fresh = Scheduler::new(4, Bitfield::new(4), config(), 19);
    fresh.handle(
        0,
        Event::Discovered(vec![PeerCandidate {
            id: known.clone(),
            origin: false,
        }]),
    );
    let wrong_length = fresh.handle(
        1,
        Event::Connected {
            peer: known.clone(),
            bitfield: Bitfield::full(5),
        },
    );
    assert_eq!(wrong_length, vec![Action::Disconnect { peer: known }]);
}

#[test]
fn a_have_makes_a_peer_useful() {
    let mut scheduler = Scheduler::new(8, Bitfield::new(8), config(), 13);
    let peer = id("a");
    scheduler.handle(
        0,
        Event::Discovered(vec![PeerCandidate {
            id: peer.clone(),
            origin: false,
        }]),
    );
    let connected = scheduler.handle(
        1,
        Event::Connected {
            peer: peer.clone(),
            bitfield: Bitfield::new(8),
        },
    );
    assert!(connected.is_empty(), "{connected:?}");
    let have = scheduler.handle(
        2,
        Event::Have {
            peer: peer.clone(),
            piece: 5,
        },
    );
    assert_eq!(
        have,
        vec![Action::Request {
            peer,
            piece: 5,
            insist: false,
        }]
    );
}

#[test]
fn origins_serve_only_what_no_agent_holds() {
    let mut sim = Sim::new(10, Bitfield::new(10), config(), 14);
    sim.peer("a", bits(10, 0..8), false, Behaviour::Honest);
    sim.peer("b", bits(10, 0..8), false, Behaviour::Honest);
    sim.peer("origin", Bitfield::full(10), true, Behaviour::Honest);
    let first = sim.discover();
    assert!(
        first
            .iter()
            .all(|action| !matches!(action, Action::Connect { peer } if peer.as_str() == "origin")),
        "origin connected before agents answered: {first:?}"
    );
    assert!(sim.run(1_000));
    let from_origin: BTreeSet<u32> = sim.requests_to("origin").into_iter().collect();
    assert_eq!(from_origin, BTreeSet::from([8, 9]));
}

#[test]
fn origins_stay_unused_when_agents_hold_everything() {
    let mut sim = Sim::new(10, Bitfield::new(10), config(), 15);
    sim.peer("a", Bitfield::full(10), false, Behaviour::Honest);
    sim.peer("b", Bitfield::full(10), false, Behaviour::Honest);
    sim.peer("origin", Bitfield::full(10), true, Behaviour::Honest);
    sim.discover();
    assert!(sim.run(1_000));
    assert!(!sim.connects().contains(&id("origin")));
}

#[test]
fn an_origin_is_the_fallback_when_agents_are_gone() {
    let mut sim = Sim::new(10, Bitfield::new(10), config(), 16);
    sim.peer("origin", Bitfield::full(10), true, Behaviour::Honest);
    sim.discover();
    assert!(sim.run(1_000));
    assert_eq!(sim.requests_to("origin").len(), 10);
}

/// Agents that take piece requests and never answer, more of them than connections: each
/// timeout swaps the silent agent for the next, so two connected agents always "hold" the
/// missing pieces. A piece that timed out at agents twice goes to the origin instead.
#[test]
fn pieces_that_keep_timing_out_at_agents_come_from_the_origin() {
    let config = SchedulerConfig {
        max_peers: 4,
        ..config()
    };
    let mut sim = Sim::new(4, bits(4, [0, 1]), config, 7);
    sim.agents("agent", 5, &bits(4, [2, 3]), Behaviour::Silent);
    sim.peer("origin", Bitfield::full(4), true, Behaviour::Honest);
    sim.discover();
    assert!(sim.run(5_000), "stalled at {:?}", sim.scheduler.have());
    let from_origin: BTreeSet<u32> = sim.requests_to("origin").into_iter().collect();
    assert_eq!(from_origin, BTreeSet::from([2, 3]));
    // Two timeouts of 15 s each, then the origin at once.
    assert!(sim.now <= 2 * 15_000 + 2_000, "took {} ms", sim.now);
}

/// Agents whose requests fail at once (as when an agent left) are dropped, and the origin
/// rule sees they are gone: no piece is sent to the origin for their failures alone while a
/// healthy agent holds it.
#[test]
fn pieces_failing_fast_at_agents_still_come_from_a_healthy_agent() {
    let mut sim = Sim::new(6, Bitfield::new(6), config(), 8);
    sim.agents("gone", 3, &Bitfield::full(6), Behaviour::Failing);
    sim.peer("a", Bitfield::full(6), false, Behaviour::Honest);
    sim.peer("b", Bitfield::full(6), false, Behaviour::Honest);
    sim.peer("origin", Bitfield::full(6), true, Behaviour::Honest);
    sim.discover();
    assert!(sim.run(5_000), "stalled at {:?}", sim.scheduler.have());
    assert!(sim.requests_to("origin").is_empty());
}

/// The download ended before one piece timeout had passed: nothing waited one out.
fn assert_done_before_the_piece_timeout(sim: &Sim) {
    let timeout = millis(config().piece_timeout);
    assert!(
        sim.now < timeout,
        "done at {} ms, not before the {timeout} ms timeout",
        sim.now
    );
}

/// Agents whose process hung with their sessions open hold more requests than endgame
/// duplicates: once a request is far older than this download's requests take (`hedge.rs`),
/// its piece is asked of another holder and its peer gets no new request, long before the piece
/// timeout fails it.
#[test]
fn requests_gone_stale_are_asked_of_another_holder_and_their_peers_get_no_more() {
    let mut sim = Sim::new(40, Bitfield::new(40), config(), 12);
    sim.agents("hung", 4, &Bitfield::full(40), Behaviour::Silent);
    sim.peer("a", Bitfield::full(40), false, Behaviour::Honest);
    sim.discover();
    assert!(sim.run(10_000), "stalled at {:?}", sim.scheduler.have());
    let stuck: usize = (0..4)
        .map(|i| sim.requests_to(&format!("hung-{i}")).len())
        .sum();
    assert!(
        stuck > config().endgame_pieces,
        "only {stuck} requests stuck: endgame alone would do"
    );
    for i in 0..4 {
        let name = format!("hung-{i}");
        assert_eq!(
            sim.requests_to(&name).len(),
            depth::INITIAL_DEPTH,
            "{name} got requests after its first went stale"
        );
    }
    let stale: Vec<&PeerId> = (sim.log.iter())
        .filter_map(|(_, action)| match action {
            Action::Stale { peer, .. } => Some(peer),
            _ => None,
        })
        .collect();
    assert_eq!(stale.len(), stuck, "every stuck request reported once");
    assert!(stale.iter().all(|peer| peer.as_str().starts_with("hung-")));
    assert_done_before_the_piece_timeout(&sim);
}

/// Agents that stopped answering do not count toward the agents that keep the origin unused:
/// once the healthy agent has sent all it holds and the rest sit at hung agents, the origin is
/// connected and asked for their stale pieces, well before the piece timeout.
#[test]
fn an_origin_serves_the_pieces_stuck_at_agents_that_stopped_answering() {
    let mut sim = Sim::new(40, Bitfield::new(40), config(), 13);
    sim.agents("hung", 4, &Bitfield::full(40), Behaviour::Silent);
    sim.peer("a", bits(40, 0..20), false, Behaviour::Honest);
    sim.peer("origin", Bitfield::full(40), true, Behaviour::Honest);
    sim.discover();
    assert!(sim.run(10_000), "stalled at {:?}", sim.scheduler.have());
    assert!(!sim.requests_to("origin").is_empty());
    assert_done_before_the_piece_timeout(&sim);
}

/// A peer whose requests went stale is not shunned for good: the only holder of half the blob,
/// paused longer than the piece timeout, is asked again once its snub ends and completes the
/// download when it resumes.
#[test]
fn a_paused_peer_that_alone_holds_pieces_is_asked_again_after_its_snub() {
    let mut sim = Sim::new(40, Bitfield::new(40), config(), 14);
    sim.peer("a", bits(40, 0..20), false, Behaviour::Honest);
    sim.peer(
        "b",
        bits(40, 20..40),
        false,
        Behaviour::Paused { until: 20_000 },
    );
    sim.discover();
    assert!(sim.run(10_000), "stalled at {:?}", sim.scheduler.have());
    assert!(sim.now >= 20_000);
}

#[test]
fn connections_stop_at_max_peers() {
    let mut sim = Sim::new(10, Bitfield::new(10), config(), 17);
    sim.agents("agent", 20, &Bitfield::full(10), Behaviour::Silent);
    let connects = sim.discover();
    assert_eq!(connects.len(), 8);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        let mut sim = Sim::new(50, Bitfield::new(50), config(), seed);
        sim.shuffle = true;
        for (i, behaviour) in [Behaviour::Honest, Behaviour::Flaky, Behaviour::Corrupt]
            .into_iter()
            .enumerate()
        {
            sim.peer(&format!("p{i}"), Bitfield::full(50), false, behaviour);
        }
        sim.discover();
        assert!(sim.run(10_000));
        sim.log
    };
    assert_eq!(run(21), run(21));
    assert_ne!(run(21), run(22));
}

#[test]
fn config_reads_human_durations_and_rejects_unknown_fields() {
    let config: SchedulerConfig =
        serde_json::from_str(r#"{"piece_timeout": "2s", "blacklist": "5m", "max_pipeline": 4}"#)
            .expect("valid config");
    assert_eq!(config.piece_timeout, Duration::from_secs(2));
    assert_eq!(config.blacklist, Duration::from_secs(300));
    assert_eq!(config.max_pipeline, 4);
    assert_eq!(config.max_peers, SchedulerConfig::default().max_peers);
    assert!(serde_json::from_str::<SchedulerConfig>(r#"{"piece_timeout_ms": 5}"#).is_err());
    // The fixed depth it replaced is refused by name, not silently ignored.
    assert!(serde_json::from_str::<SchedulerConfig>(r#"{"pipeline": 2}"#).is_err());
    assert_eq!(SchedulerConfig::default().validate(), Ok(()));
    let zero = SchedulerConfig {
        max_pipeline: 0,
        ..config
    };
    assert_eq!(
        zero.validate(),
        Err(SchedulerConfigError::Zero {
            field: "max_pipeline"
        })
    );
}

/// Piece count, peers (which pieces each holds, which of those it gains only later, behaviour
/// kind), pieces on disk, seed.
type SwarmSpec = (u32, Vec<(Vec<bool>, Vec<bool>, u8)>, Vec<bool>, u64);

/// A random swarm whose honest peers together hold every piece, plus misbehaving peers.
fn swarm() -> impl Strategy<Value = SwarmSpec> {
    (1u32..60).prop_flat_map(|pieces| {
        let peer = (
            proptest::collection::vec(any::<bool>(), pieces as usize),
            proptest::collection::vec(any::<bool>(), pieces as usize),
            0u8..8,
        );
        (
            Just(pieces),
            proptest::collection::vec(peer, 1..7),
            proptest::collection::vec(any::<bool>(), pieces as usize),
            any::<u64>(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_swarms_always_complete((pieces, peers, have, seed) in swarm()) {
        let config = SchedulerConfig { max_peers: 4, ..config() };
        let have = bits(pieces, (0..pieces).filter(|&p| have[p as usize]));
        let mut sim = Sim::new(pieces, have, config, seed);
        sim.shuffle = true;
        sim.churn = seed % 3 == 0;
        let mut covered = Bitfield::new(pieces);
        for (i, (held, late, kind)) in peers.iter().enumerate() {
            let name = format!("agent-{i}");
            let field = bits(pieces, (0..pieces).filter(|&p| held[p as usize]));
            // Kinds 0..=4 are honest agents, so most swarms are mostly healthy.
            let behaviour = match kind {
                5 => Behaviour::Corrupt,
                6 => Behaviour::Silent,
                7 => Behaviour::Flaky,
                _ => Behaviour::Honest,
            };
            if behaviour == Behaviour::Honest {
                for piece in field.ones() {
                    covered.set(piece);
                }
            }
            let now = bits(pieces, field.ones().filter(|&p| !late[p as usize]));
            sim.peer(&name, now, false, behaviour);
            sim.gains_later(&name, field.ones().filter(|&p| late[p as usize]));
        }
        // The honest peers' union must be complete: pieces nobody honest holds go to one that
        // exists, or to an origin.
        let missing: Vec<u32> = covered.zeros().collect();
        if !missing.is_empty() {
            if seed % 2 == 0 {
                sim.peer("origin", Bitfield::full(pieces), true, Behaviour::Honest);
            } else {
                sim.peer("extra", bits(pieces, missing), false, Behaviour::Honest);
            }
        }
        sim.discover();
        prop_assert!(sim.run(50_000), "stalled at {:?} after {} actions", sim.scheduler.have(), sim.log.len());
        prop_assert!(sim.scheduler.have().is_complete());
        prop_assert_eq!(sim.completes, 1);
    }
}

#[test]
fn a_large_swarm_download_completes() {
    let mut sim = Sim::new(4_000, Bitfield::new(4_000), config(), 23);
    sim.shuffle = true;
    for i in 0..30 {
        let held = bits(4_000, (0..4_000).filter(|piece| (piece + i) % 3 != 0));
        sim.peer(&format!("agent-{i}"), held, false, Behaviour::Honest);
    }
    sim.peer("origin", Bitfield::full(4_000), true, Behaviour::Honest);
    sim.discover();
    assert!(sim.run(100_000));
    assert!(sim.requests_to("origin").is_empty());
}

/// Connects `peer` (an agent or origin holding every one of `pieces` pieces) and returns the
/// actions of its handshake.
fn connect(
    scheduler: &mut Scheduler,
    now: u64,
    peer: &PeerId,
    origin: bool,
    pieces: u32,
) -> Vec<Action> {
    scheduler.handle(
        now,
        Event::Discovered(vec![PeerCandidate {
            id: peer.clone(),
            origin,
        }]),
    );
    scheduler.handle(
        now,
        Event::Connected {
            peer: peer.clone(),
            bitfield: Bitfield::full(pieces),
        },
    )
}

fn requested(actions: &[Action], to: &PeerId) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Request { peer, piece, .. } if peer == to => Some(*piece),
            _ => None,
        })
        .collect()
}

#[test]
fn a_busy_peer_rests_for_its_back_off_and_is_never_dropped_for_it() {
    let config = SchedulerConfig {
        max_pipeline: 1,
        endgame_pieces: 0,
        ..config()
    };
    let backoff = millis(config.busy_backoff);
    let mut scheduler = Scheduler::new(4, Bitfield::new(4), config.clone(), 20);
    let origin = id("origin");
    let first = connect(&mut scheduler, 0, &origin, true, 4);
    let [piece] = requested(&first, &origin)[..] else {
        panic!("{first:?}");
    };
    // Many more busy answers than `max_failures`: the origin stays, and each answer makes it
    // rest at least half the (doubling) back-off before it is asked again.
    let mut now = 0;
    let mut asked = piece;
    for streak in 0..(config.max_failures + 3) {
        let out = scheduler.handle(
            now,
            Event::PieceBusy {
                peer: origin.clone(),
                piece: asked,
            },
        );
        assert!(
            !out.iter().any(|a| matches!(a, Action::Disconnect { .. })),
            "dropped after {streak} busy answers: {out:?}"
        );
        assert!(
            requested(&out, &origin).is_empty(),
            "asked at once: {out:?}"
        );
        let floor = (backoff << streak).min(millis(MAX_BUSY_BACKOFF)) / 2;
        let early = scheduler.handle(now + floor - 1, Event::Tick);
        assert!(
            requested(&early, &origin).is_empty(),
            "asked during back-off: {early:?}"
        );
        now += 3 * floor + 1;
        let again = requested(&scheduler.handle(now, Event::Tick), &origin);
        let [next] = again[..] else {
            panic!("not asked again after the back-off: {again:?}");
        };
        asked = next;
    }
    // A delivery resets the back-off: the next busy answer rests the peer the base time only.
    scheduler.handle(
        now,
        Event::PieceDone {
            peer: origin.clone(),
            piece: asked,
            rtt: Duration::ZERO,
            in_order: false,
        },
    );
    let next = requested(&scheduler.handle(now, Event::Tick), &origin);
    let [next] = next[..] else {
        // The delivery itself refilled the slot.
        return;
    };
    scheduler.handle(
        now,
        Event::PieceBusy {
            peer: origin.clone(),
            piece: next,
        },
    );
    let again = scheduler.handle(now + backoff * 3 / 2 + 1, Event::Tick);
    assert_eq!(requested(&again, &origin).len(), 1, "{again:?}");
}

#[test]
fn a_busy_answer_sends_the_piece_to_another_holder_at_once() {
    let config = SchedulerConfig {
        max_pipeline: 1,
        endgame_pieces: 0,
        ..config()
    };
    let mut scheduler = Scheduler::new(2, Bitfield::new(2), config, 21);
    let (a, b) = (id("a"), id("b"));
    let to_a = connect(&mut scheduler, 0, &a, false, 2);
    let [piece] = requested(&to_a, &a)[..] else {
        panic!("{to_a:?}");
    };
    let to_b = connect(&mut scheduler, 1, &b, false, 2);
    let [other] = requested(&to_b, &b)[..] else {
        panic!("{to_b:?}");
    };
    assert_ne!(piece, other);
    scheduler.handle(
        2,
        Event::PieceDone {
            peer: b.clone(),
            piece: other,
            rtt: Duration::ZERO,
            in_order: false,
        },
    );
    let out = scheduler.handle(
        3,
        Event::PieceBusy {
            peer: a.clone(),
            piece,
        },
    );
    assert_eq!(
        out,
        vec![Action::Request {
            peer: b,
            piece,
            insist: false,
        }]
    );
}

#[test]
fn an_origin_beside_agents_gets_one_request_even_before_any_agent_is_useful() {
    // A flash crowd: every agent is as empty as we are, and the origin is the only source.
    let mut scheduler = Scheduler::new(16, Bitfield::new(16), config(), 22);
    let empty = id("empty-agent");
    scheduler.handle(
        0,
        Event::Discovered(vec![
            PeerCandidate {
                id: empty.clone(),
                origin: false,
            },
            PeerCandidate {
                id: id("origin"),
                origin: true,
            },
        ]),
    );
    scheduler.handle(
        1,
        Event::Connected {
            peer: empty,
            bitfield: Bitfield::new(16),
        },
    );
    let out = scheduler.handle(
        2,
        Event::Connected {
            peer: id("origin"),
            bitfield: Bitfield::full(16),
        },
    );
    assert_eq!(requested(&out, &id("origin")).len(), 1, "{out:?}");
    // Alone, an origin gets the full pipeline.
    let mut alone = Scheduler::new(16, Bitfield::new(16), config(), 22);
    let out = connect(&mut alone, 0, &id("origin"), true, 16);
    assert_eq!(requested(&out, &id("origin")).len(), depth::INITIAL_DEPTH);
}

fn connects(actions: &[Action]) -> Vec<PeerId> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Connect { peer } => Some(peer.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn peers_that_never_answer_hold_up_the_origin_only_for_the_grace() {
    // 100 hung agents (they accept TCP, then never send a bitfield) and one origin.
    let hung: Vec<PeerId> = (0..100).map(|i| id(&format!("hung-{i}"))).collect();
    let origin = id("origin");
    let mut batch: Vec<PeerCandidate> = hung
        .iter()
        .map(|peer| PeerCandidate {
            id: peer.clone(),
            origin: false,
        })
        .collect();
    batch.push(PeerCandidate {
        id: origin.clone(),
        origin: true,
    });
    let mut scheduler = Scheduler::new(16, Bitfield::new(16), config(), 23);
    let first = connects(&scheduler.handle(0, Event::Discovered(batch.clone())));
    assert_eq!(first.len(), config().max_peers, "{first:?}");
    assert!(
        !first.contains(&origin),
        "origin before the agents answered"
    );
    // Within the grace the fresh handshakes are waited for.
    assert!(connects(&scheduler.handle(100, Event::Tick)).is_empty());
    // From its end, the pending handshakes no longer keep the origin unused.
    let later = connects(&scheduler.handle(250, Event::Tick));
    assert_eq!(later, vec![origin.clone()]);
    // Alone among stale handshakes, the origin gets the full pipeline.
    let out = scheduler.handle(
        260,
        Event::Connected {
            peer: origin.clone(),
            bitfield: Bitfield::full(16),
        },
    );
    assert_eq!(
        requested(&out, &origin).len(),
        depth::INITIAL_DEPTH,
        "{out:?}"
    );

    // The handshakes time out; the hung agents are not tried again when the tracker hands
    // them out once more, and their slots (all but the origin's) go to the ones not tried yet.
    let mut retried = Vec::new();
    for peer in &first {
        retried.extend(connects(
            &scheduler.handle(10_000, Event::ConnectFailed { peer: peer.clone() }),
        ));
    }
    retried.extend(connects(
        &scheduler.handle(10_100, Event::Discovered(batch)),
    ));
    assert_eq!(retried.len(), config().max_peers - 1, "{retried:?}");
    assert!(
        retried.iter().all(|peer| !first.contains(peer)),
        "a hung peer was retried at once: {retried:?}"
    );
}

#[test]
fn an_owner_that_never_answers_holds_up_the_next_owner_only_for_the_grace() {
    // Three owners and no agent: one owner is connected at a time, and one that accepts TCP
    // and never sends its bitfield (a hung origin) is not waited for past the grace.
    let owners: Vec<PeerId> = ["owner-a", "owner-b", "owner-c"].map(id).to_vec();
    let batch = owners
        .iter()
        .map(|peer| PeerCandidate {
            id: peer.clone(),
            origin: true,
        })
        .collect();
    let mut scheduler = Scheduler::new(16, Bitfield::new(16), config(), 5);
    let [hung] = &connects(&scheduler.handle(0, Event::Discovered(batch)))[..] else {
        panic!("not one owner connected first");
    };
    assert!(connects(&scheduler.handle(200, Event::Tick)).is_empty());
    let [next] = &connects(&scheduler.handle(250, Event::Tick))[..] else {
        panic!("the next owner is not connected after the grace");
    };
    assert_ne!(next, hung);
    let out = scheduler.handle(
        260,
        Event::Connected {
            peer: next.clone(),
            bitfield: Bitfield::full(16),
        },
    );
    assert!(!requested(&out, next).is_empty(), "{out:?}");
}

#[test]
fn a_lone_downloader_asks_in_order_and_a_swarm_member_rarest_first() {
    // Alone with an origin (or with complete seeders only): pieces in index order.
    let mut lone = Scheduler::new(64, Bitfield::new(64), config(), 24);
    let origin = id("origin");
    let out = connect(&mut lone, 0, &origin, true, 64);
    assert_eq!(requested(&out, &origin), vec![0, 1]);
    let out = lone.handle(
        5,
        Event::PieceDone {
            peer: origin.clone(),
            piece: 1,
            rtt: Duration::ZERO,
            in_order: false,
        },
    );
    assert_eq!(requested(&out, &origin), vec![2]);

    // Beside other downloaders: rarest first, random among equals.
    let mut swarm = Scheduler::new(64, Bitfield::new(64), config(), 24);
    let (a, b) = (id("a"), id("b"));
    swarm.handle(
        0,
        Event::Discovered(vec![
            PeerCandidate {
                id: a.clone(),
                origin: false,
            },
            PeerCandidate {
                id: b.clone(),
                origin: false,
            },
        ]),
    );
    let out = swarm.handle(
        1,
        Event::Connected {
            peer: a.clone(),
            bitfield: bits(64, 0..48),
        },
    );
    let from_a = requested(&out, &a);
    assert_eq!(from_a.len(), depth::INITIAL_DEPTH, "{out:?}");
    assert_ne!(
        from_a,
        vec![0, 1, 2, 3],
        "in order although a swarm is around"
    );
    let out = swarm.handle(
        2,
        Event::Connected {
            peer: b.clone(),
            bitfield: bits(64, 16..64),
        },
    );
    // Pieces 48..64 have one holder (b); 16..48 have two.
    let from_b = requested(&out, &b);
    assert_eq!(from_b.len(), depth::INITIAL_DEPTH, "{out:?}");
    assert!(
        from_b.iter().all(|piece| (48..64).contains(piece)),
        "{from_b:?}"
    );
}

#[test]
fn a_swarm_member_keeps_a_few_pieces_past_its_prefix_in_flight_for_a_streaming_reader() {
    let pieces = 240;
    let mut sim = Sim::new(pieces, Bitfield::new(pieces), config(), 31);
    // Six downloaders, each lacking a different sixth: every piece equally rare.
    for k in 0..6 {
        let held = bits(pieces, (0..pieces).filter(|p| p % 6 != k));
        sim.peer(&format!("p{k}"), held, false, Behaviour::Honest);
    }
    sim.discover();
    let mut prefix_at_half = None;
    for _ in 0..100_000 {
        if sim.scheduler.is_complete() {
            break;
        }
        sim.step();
        let have = sim.scheduler.have();
        if prefix_at_half.is_none() && have.count() >= pieces / 2 {
            prefix_at_half = have.zeros().next();
        }
    }
    assert!(sim.scheduler.is_complete());
    // A streaming reader has a good part of the blob by the time half of it is here (with
    // rarest-first alone, a few pieces at most).
    let prefix = prefix_at_half.expect("half the pieces arrived");
    assert!(prefix >= pieces / 4, "prefix {prefix} at half the pieces");
    // ...while the other requests still spread over the whole blob.
    let asked: Vec<u32> = sim.requests().map(|(_, piece)| piece).collect();
    let out_of_order = asked.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(out_of_order >= asked.len() / 8, "{asked:?}");
}

/// Delivers the oldest request in flight at `peer` every `piece_ms`, each answered after
/// `rtt`, for `until_ms`; returns the requests in flight at each delivery and the pieces asked
/// for, in order.
fn deliver_steadily(
    scheduler: &mut Scheduler,
    peer: &PeerId,
    first: Vec<Action>,
    piece_ms: u64,
    rtt: Duration,
    until_ms: u64,
) -> (Vec<usize>, Vec<u32>) {
    let mut inflight: VecDeque<u32> = requested(&first, peer).into();
    let mut asked: Vec<u32> = inflight.iter().copied().collect();
    let mut depths = Vec::new();
    let mut now = 0;
    while now < until_ms {
        now += piece_ms;
        let Some(piece) = inflight.pop_front() else {
            break;
        };
        let out = scheduler.handle(
            now,
            Event::PieceDone {
                peer: peer.clone(),
                piece,
                rtt,
                in_order: false,
            },
        );
        let more = requested(&out, peer);
        asked.extend(&more);
        inflight.extend(more);
        depths.push(inflight.len());
    }
    (depths, asked)
}

#[test]
fn a_lone_agent_keeps_its_pipe_full_as_the_round_trip_grows() {
    // A piece every 2 ms from the origin, each request answered after 0.4 ms: with fewer than
    // four asked together the origin idles more than 5 % of the time between rounds.
    let mut lone = Scheduler::new(4096, Bitfield::new(4096), config_deep(), 25);
    let origin = id("origin");
    let first = connect(&mut lone, 0, &origin, true, 4096);
    assert_eq!(requested(&first, &origin).len(), depth::INITIAL_DEPTH);
    let (depths, asked) = deliver_steadily(
        &mut lone,
        &origin,
        first,
        2,
        Duration::from_micros(400),
        1_000,
    );
    // Once measured (a 50 ms window), the pipe holds four and stays there.
    assert!(depths[40..].iter().all(|&depth| depth == 4), "{depths:?}");
    // Still in order: a client streaming the blob reads it as it lands.
    assert!(asked.windows(2).all(|pair| pair[1] == pair[0] + 1));
}

#[test]
fn in_a_crowd_each_slow_peer_gets_one_request_and_requests_spread() {
    // Eight seeders each delivering a piece every 2 s within a 1 ms answer: one request at
    // each is enough, so the download's requests sit at eight peers, not two at four.
    let mut scheduler = Scheduler::new(256, Bitfield::new(256), config_deep(), 26);
    let seeders: Vec<PeerId> = (0..8).map(|i| id(&format!("seeder-{i}"))).collect();
    let mut inflight: Vec<(PeerId, u32)> = Vec::new();
    for seeder in &seeders {
        let out = connect(&mut scheduler, 0, seeder, false, 256);
        inflight.extend(
            requested(&out, seeder)
                .into_iter()
                .map(|p| (seeder.clone(), p)),
        );
    }
    for round in 1..=5u64 {
        let now = round * 2_000;
        for (peer, piece) in std::mem::take(&mut inflight) {
            let out = scheduler.handle(
                now,
                Event::PieceDone {
                    peer: peer.clone(),
                    piece,
                    rtt: Duration::from_millis(1),
                    in_order: false,
                },
            );
            for seeder in &seeders {
                inflight.extend(
                    requested(&out, seeder)
                        .into_iter()
                        .map(|p| (seeder.clone(), p)),
                );
            }
        }
    }
    for seeder in &seeders {
        let at = inflight.iter().filter(|(peer, _)| peer == seeder).count();
        assert_eq!(at, 1, "{seeder}: {inflight:?}");
    }
}

/// A flash crowd's start: an empty agent and an origin connected, the origin asked for one
/// piece. Returns the scheduler and that piece.
fn beside_an_empty_agent(pieces: u32, seed: u64) -> (Scheduler, u32) {
    let mut scheduler = Scheduler::new(pieces, Bitfield::new(pieces), config(), seed);
    let agent = id("agent");
    connect_empty(&mut scheduler, 0, &agent, pieces);
    let out = connect(&mut scheduler, 1, &id("origin"), true, pieces);
    let [piece] = requested(&out, &id("origin"))[..] else {
        panic!("{out:?}");
    };
    assert!(
        out.iter()
            .all(|action| !matches!(action, Action::Request { insist: true, .. })),
        "{out:?}"
    );
    (scheduler, piece)
}

fn connect_empty(scheduler: &mut Scheduler, now: u64, peer: &PeerId, pieces: u32) {
    scheduler.handle(
        now,
        Event::Discovered(vec![PeerCandidate {
            id: peer.clone(),
            origin: false,
        }]),
    );
    scheduler.handle(
        now,
        Event::Connected {
            peer: peer.clone(),
            bitfield: Bitfield::new(pieces),
        },
    );
}

#[test]
fn an_origin_refuses_a_recently_sent_piece_and_the_refused_agent_gets_it_from_a_peer() {
    let (mut scheduler, piece) = beside_an_empty_agent(4, 30);
    let origin = id("origin");
    // The origin sends us elsewhere: it is not backed off but asked for another piece at once.
    let out = scheduler.handle(
        10,
        Event::PieceElsewhere {
            peer: origin.clone(),
            piece,
            instead: None,
        },
    );
    let [other] = requested(&out, &origin)[..] else {
        panic!("the origin is refilled at once: {out:?}");
    };
    assert_ne!(other, piece);
    // The agent announces the piece: it is asked for it, the origin never again.
    let out = scheduler.handle(
        20,
        Event::Have {
            peer: id("agent"),
            piece,
        },
    );
    assert_eq!(requested(&out, &id("agent")), vec![piece], "{out:?}");
    let later = scheduler.handle(5_000, Event::Tick);
    assert!(!requested(&later, &origin).contains(&piece), "{later:?}");
}

#[test]
fn a_refused_piece_no_agent_gets_is_asked_again_after_the_wait_and_insists() {
    let (mut scheduler, piece) = beside_an_empty_agent(2, 31);
    let origin = id("origin");
    let wait = millis(config().elsewhere_wait);
    let out = scheduler.handle(
        10,
        Event::PieceElsewhere {
            peer: origin.clone(),
            piece,
            instead: None,
        },
    );
    let [other] = requested(&out, &origin)[..] else {
        panic!("{out:?}");
    };
    let out = scheduler.handle(
        20,
        Event::PieceDone {
            peer: origin.clone(),
            piece: other,
            rtt: Duration::from_millis(1),
            in_order: false,
        },
    );
    assert!(requested(&out, &origin).is_empty(), "{out:?}");
    let early = scheduler.handle(10 + wait - 1, Event::Tick);
    assert!(requested(&early, &origin).is_empty(), "{early:?}");
    let out = scheduler.handle(10 + wait, Event::Tick);
    assert_eq!(
        out,
        vec![Action::Request {
            peer: origin.clone(),
            piece,
            insist: true,
        }]
    );
    // An insisting request that is refused again (the origin had no other choice) waits and
    // insists again: the piece is never stranded.
    scheduler.handle(
        10 + wait + 5,
        Event::PieceElsewhere {
            peer: origin.clone(),
            piece,
            instead: None,
        },
    );
    let out = scheduler.handle(10 + 2 * wait + 5, Event::Tick);
    assert_eq!(
        out,
        vec![Action::Request {
            peer: origin.clone(),
            piece,
            insist: true,
        }]
    );
    scheduler.handle(
        10 + 2 * wait + 6,
        Event::PieceDone {
            peer: origin,
            piece,
            rtt: Duration::from_millis(1),
            in_order: false,
        },
    );
    assert!(scheduler.is_complete());
}

#[test]
fn a_refused_piece_an_agent_announces_meanwhile_is_not_insisted_on() {
    let (mut scheduler, piece) = beside_an_empty_agent(4, 32);
    let origin = id("origin");
    let wait = millis(config().elsewhere_wait);
    scheduler.handle(
        10,
        Event::PieceElsewhere {
            peer: origin.clone(),
            piece,
            instead: None,
        },
    );
    // The agent holds it, but is slow to deliver: the origin, asked again after the wait,
    // may refuse again.
    scheduler.handle(
        20,
        Event::Have {
            peer: id("agent"),
            piece,
        },
    );
    let out = scheduler.handle(10 + wait, Event::Tick);
    assert!(
        out.iter()
            .all(|action| !matches!(action, Action::Request { insist: true, .. })),
        "{out:?}"
    );
}

#[test]
fn an_origin_that_keeps_answering_elsewhere_rests_longer_each_time_until_it_serves() {
    let (mut scheduler, mut piece) = beside_an_empty_agent(64, 33);
    let origin = id("origin");
    let busy = millis(config().busy_backoff);
    let cap = millis(config().elsewhere_wait);
    let mut now = 10;
    // The first refusals in a row are answered with another request at once.
    for _ in 0..ELSEWHERE_FREE {
        let out = refuse(&mut scheduler, now, &origin, piece);
        let [next] = requested(&out, &origin)[..] else {
            panic!("refilled at once: {out:?}");
        };
        piece = next;
        now += 1;
    }
    // Past them, the origin rests: not asked until the jittered rest (×0.5 to ×1.5) is over,
    // and each refusal in a row doubles it, up to `elsewhere_wait`.
    let mut rests = Vec::new();
    for past in 0..6u32 {
        let out = refuse(&mut scheduler, now, &origin, piece);
        assert!(requested(&out, &origin).is_empty(), "{out:?}");
        let rest = (busy << past).min(cap);
        let early = scheduler.handle(now + rest / 2 - 1, Event::Tick);
        assert!(requested(&early, &origin).is_empty(), "{early:?}");
        let (at, next) = (now + rest / 2..=now + rest * 3 / 2)
            .step_by(10)
            .find_map(|t| {
                let out = scheduler.handle(t, Event::Tick);
                requested(&out, &origin).first().map(|&p| (t, p))
            })
            .expect("asked again once the rest is over");
        rests.push(at - now);
        now = at;
        piece = next;
    }
    // Jitter blurs neighbours; two doublings apart, the longer rest always wins.
    assert!(rests[2] > rests[0] && rests[3] > rests[1], "{rests:?}");
    assert!(rests.iter().all(|&rest| rest <= cap * 3 / 2), "{rests:?}");
    // A delivered piece ends the streak: the next refusal is answered at once again.
    let out = scheduler.handle(
        now + 1,
        Event::PieceDone {
            peer: origin.clone(),
            piece,
            rtt: Duration::from_millis(1),
            in_order: false,
        },
    );
    let [next] = requested(&out, &origin)[..] else {
        panic!("{out:?}");
    };
    let out = refuse(&mut scheduler, now + 2, &origin, next);
    assert_eq!(requested(&out, &origin).len(), 1, "{out:?}");
}

/// The origin answers "elsewhere" for `piece` at `now`; the scheduler's actions.
fn refuse(scheduler: &mut Scheduler, now: u64, origin: &PeerId, piece: u32) -> Vec<Action> {
    scheduler.handle(
        now,
        Event::PieceElsewhere {
            peer: origin.clone(),
            piece,
            instead: None,
        },
    )
}

/// Connects whatever the scheduler asks to connect (every peer holds every piece), until it asks
/// for nothing more; returns the requests each peer got, in connection order.
fn connect_all_asked(
    scheduler: &mut Scheduler,
    mut out: Vec<Action>,
    pieces: u32,
) -> Vec<(PeerId, usize)> {
    let mut asked = Vec::new();
    let mut now = 10;
    while let Some(peer) = connects(&out).into_iter().next() {
        now += 10;
        out = scheduler.handle(
            now,
            Event::Connected {
                peer: peer.clone(),
                bitfield: Bitfield::full(pieces),
            },
        );
        asked.push((peer.clone(), requested(&out, &peer).len()));
    }
    asked
}

#[test]
fn every_owning_origin_is_connected_each_at_full_depth_alone_and_one_request_in_a_crowd() {
    let owners: Vec<PeerCandidate> = (0..3)
        .map(|i| PeerCandidate {
            id: id(&format!("origin-{i}")),
            origin: true,
        })
        .collect();

    // Alone: each owner, connected in turn, gets the full pipeline.
    let mut alone = Scheduler::new(64, Bitfield::new(64), config(), 23);
    let out = alone.handle(0, Event::Discovered(owners.clone()));
    assert_eq!(
        connects(&out).len(),
        1,
        "one origin attempt at a time: {out:?}"
    );
    let asked = connect_all_asked(&mut alone, out, 64);
    assert_eq!(asked.len(), 3, "{asked:?}");
    assert!(
        asked.iter().all(|(_, n)| *n == depth::INITIAL_DEPTH),
        "{asked:?}"
    );

    // In a crowd (an empty agent connected), every owner still gets asked: in a crowd each sends
    // only its share of the pieces. Each gets one request at a time.
    let mut crowd = Scheduler::new(64, Bitfield::new(64), config(), 24);
    connect_empty(&mut crowd, 0, &id("empty-agent"), 64);
    let out = crowd.handle(2, Event::Discovered(owners));
    let asked = connect_all_asked(&mut crowd, out, 64);
    assert_eq!(asked.len(), 3, "{asked:?}");
    assert!(asked.iter().all(|(_, n)| *n == 1), "{asked:?}");
}

/// Beside an empty agent, with the tracker having counted `members`; the piece the origin
/// was asked for first.
fn in_a_swarm_of(members: u32, pieces: u32, seed: u64) -> (Scheduler, u32) {
    let mut scheduler = Scheduler::new(pieces, Bitfield::new(pieces), config(), seed);
    scheduler.handle(0, Event::SwarmSize { members });
    let agent = id("agent");
    connect_empty(&mut scheduler, 0, &agent, pieces);
    let out = connect(&mut scheduler, 1, &id("origin"), true, pieces);
    let [piece] = requested(&out, &id("origin"))[..] else {
        panic!("{out:?}");
    };
    (scheduler, piece)
}

#[test]
fn in_a_small_swarm_origins_are_asked_in_order_and_for_the_piece_they_offer_instead() {
    let origin = id("origin");
    // 2 members (us and the agent), within a third of `max_peers` (8), and one origin: it is
    // asked for the lowest piece nobody holds.
    let (mut scheduler, first) = in_a_swarm_of(2, 64, 40);
    assert_eq!(first, 0);
    // Refused, with piece 9 offered instead: 9 is asked for at once, and that is no refusal
    // in a row (no rest follows however many come).
    let mut piece = first;
    for (now, offered) in [(10, 9), (11, 30), (12, 31), (13, 40), (14, 41)] {
        let out = scheduler.handle(
            now,
            Event::PieceElsewhere {
                peer: origin.clone(),
                piece,
                instead: Some(offered),
            },
        );
        assert_eq!(requested(&out, &origin), vec![offered], "{out:?}");
        piece = offered;
    }
    // An offer of a piece already in flight elsewhere (or held) is a plain refusal: the origin
    // is asked for the lowest piece it may serve instead.
    let out = scheduler.handle(
        20,
        Event::Have {
            peer: id("agent"),
            piece: 1,
        },
    );
    let [at_agent] = requested(&out, &id("agent"))[..] else {
        panic!("{out:?}");
    };
    let out = scheduler.handle(
        30,
        Event::PieceElsewhere {
            peer: origin.clone(),
            piece,
            instead: Some(at_agent),
        },
    );
    let [next] = requested(&out, &origin)[..] else {
        panic!("{out:?}");
    };
    assert_ne!(next, at_agent);
    assert_eq!(next, 2, "0 was refused, 1 is at the agent: {out:?}");
}

#[test]
fn in_a_large_swarm_or_before_the_tracker_counts_origins_are_asked_rarest_first() {
    let origin = id("origin");
    // 1,000 members: the order is rarest first with a random tie-break, and an offer is not
    // taken up (another piece is picked).
    let (mut scheduler, first) = in_a_swarm_of(1_000, 64, 40);
    assert_ne!(first, 0);
    let out = scheduler.handle(
        10,
        Event::PieceElsewhere {
            peer: origin.clone(),
            piece: first,
            instead: Some(0),
        },
    );
    let [next] = requested(&out, &origin)[..] else {
        panic!("{out:?}");
    };
    assert_ne!(next, 0, "{out:?}");
    // No count yet (a tracker that does not count): as before.
    let mut scheduler = Scheduler::new(64, Bitfield::new(64), config(), 40);
    connect_empty(&mut scheduler, 0, &id("agent"), 64);
    let out = connect(&mut scheduler, 1, &origin, true, 64);
    assert_eq!(requested(&out, &origin), vec![first], "{out:?}");
    // A swarm counted large stays large: a later small count does not switch the order.
    let (mut scheduler, _) = in_a_swarm_of(1_000, 64, 40);
    scheduler.handle(20, Event::SwarmSize { members: 2 });
    assert!(!scheduler.small_swarm());
    // 3 members is more than a third of 8 connections.
    let (_, first) = in_a_swarm_of(3, 64, 40);
    assert_ne!(first, 0);
    // Two owners handed out: each sends only its share first, so no order.
    let mut scheduler = Scheduler::new(64, Bitfield::new(64), config(), 40);
    scheduler.handle(0, Event::SwarmSize { members: 2 });
    let owners = ["origin", "other-owner"].map(|name| PeerCandidate {
        id: id(name),
        origin: true,
    });
    let mut out = scheduler.handle(0, Event::Discovered(owners.to_vec()));
    out.extend(scheduler.handle(
        0,
        Event::Discovered(vec![PeerCandidate {
            id: id("agent"),
            origin: false,
        }]),
    ));
    out.extend(scheduler.handle(
        0,
        Event::Connected {
            peer: id("agent"),
            bitfield: Bitfield::new(64),
        },
    ));
    // Within the grace of the first owner's handshake: one owner connecting.
    out.extend(scheduler.handle(200, Event::Tick));
    let asked_to_connect: Vec<PeerId> = connects(&out)
        .into_iter()
        .filter(|peer| peer != &id("agent"))
        .collect();
    let [owner] = &asked_to_connect[..] else {
        panic!("{out:?}");
    };
    let out = scheduler.handle(
        201,
        Event::Connected {
            peer: owner.clone(),
            bitfield: Bitfield::full(64),
        },
    );
    let asked = requested(&out, owner);
    assert_eq!(asked.len(), 1, "{out:?}");
    assert_ne!(asked, vec![0], "{out:?}");
}
