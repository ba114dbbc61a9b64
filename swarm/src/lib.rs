//! Shoal's swarm policies, pure: no sockets, clocks or async runtime, so the agents' engine, the
//! tracker and the simulator (`sim/`) run the same code, and tests drive it with a seed.
//!
//! - [`announce`]: when a download announces again;
//! - [`notices`]: when a peer tells its sessions about pieces it gained;
//! - [`scheduler`]: one download's choices (which peer to connect, which piece to ask whom for,
//!   when to give up on a peer);
//! - [`handout`]: which peers the tracker answers an announce with;
//! - [`slots`]: how many pieces a peer serves at once, and when it answers busy instead;
//! - [`seeding`]: which requests an origin serving a crowd answers "get it elsewhere".

pub mod announce;
pub mod handout;
pub mod notices;
pub mod scheduler;
pub mod seeding;
pub mod slots;
