//! Which vector instructions the kernels may use, found at run time (so a binary built
//! for plain x86-64 still runs AVX2/AVX-512 code where the CPU has it), and the macro
//! that compiles one kernel body once per instruction set.

use std::sync::OnceLock;

/// An instruction-set level the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Whatever the build targets (no run-time features assumed).
    Portable,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL/VNNI on top of AVX2, and BMI2 (which every CPU with AVX-512 has;
    /// `iq_bytes` spreads bit fields with `pdep`).
    Avx512,
}

impl Level {
    /// The best level this CPU supports, capped by `LOWBIT_ISA` (`portable`, `avx2`,
    /// `avx512`) when set — for benchmarks and for testing every path on one machine.
    pub fn detected() -> Level {
        static LEVEL: OnceLock<Level> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let best = Level::supported().into_iter().max().unwrap_or(Level::Portable);
            match std::env::var("LOWBIT_ISA").ok().as_deref() {
                Some("portable") => Level::Portable,
                Some("avx2") => best.min(Level::Avx2),
                _ => best,
            }
        })
    }

    /// Every level this CPU can run.
    pub fn supported() -> Vec<Level> {
        let mut out = vec![Level::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            if avx2 {
                out.push(Level::Avx2);
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("bmi2")
                {
                    out.push(Level::Avx512);
                }
            }
        }
        out
    }
}

/// Defines `pub(crate) fn $name<K: Bound>(level: Level, args…)` whose body is compiled
/// three times: with AVX-512, with AVX2 and for the build's baseline, and runs the
/// variant `level` names. In the body, `S` is that level's [`super::simd::Simd`] (its
/// vector operations); the rest is plain Rust the compiler vectorises with the level's
/// target features. Results do not depend on the level: integer sums are exact, and
/// float sums run in the same fixed lanes in every variant (no fused multiply-add).
macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident<$K:ident: $B:path>($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        pub(crate) fn $name<$K: $B>(level: $crate::kernels::isa::Level, $($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::extra_unused_type_parameters)] // a body may need no vector op
            fn body<$K: $B, S: $crate::kernels::simd::Simd>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            fn v4<$K: $B>($($arg: $ty),*) {
                body::<$K, $crate::kernels::simd::Avx512>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            fn v3<$K: $B>($($arg: $ty),*) {
                body::<$K, $crate::kernels::simd::Avx2>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            match level {
                // SAFETY: `Level::detected`/`supported` report AVX-512 only when the CPU
                // has every feature `v4` enables (checked with is_x86_feature_detected).
                $crate::kernels::isa::Level::Avx512 => return unsafe { v4::<$K>($($arg),*) },
                // SAFETY: as above, for AVX2, FMA and F16C.
                $crate::kernels::isa::Level::Avx2 => return unsafe { v3::<$K>($($arg),*) },
                $crate::kernels::isa::Level::Portable => {}
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = level;
            body::<$K, $crate::kernels::simd::Scalar>($($arg),*)
        }
    };
}

pub(crate) use multiversion;
