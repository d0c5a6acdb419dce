//! Spherical-earth geodesy on (lat, lon) degrees: enough for trips and simulated routes.

const EARTH_KM: f64 = 6_371.0;

/// Great-circle distance between two (lat, lon) points in degrees.
pub fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a.0.to_radians(),
        a.1.to_radians(),
        b.0.to_radians(),
        b.1.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * EARTH_KM * h.sqrt().asin()
}

/// Initial bearing from `a` to `b`, degrees clockwise from north.
pub fn bearing(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, la2, dlo) = (a.0.to_radians(), b.0.to_radians(), (b.1 - a.1).to_radians());
    let y = dlo.sin() * la2.cos();
    let x = la1.cos() * la2.sin() - la1.sin() * la2.cos() * dlo.cos();
    y.atan2(x).to_degrees().rem_euclid(360.0)
}

/// The point `km` away from `a` along `heading_deg`.
pub fn destination(a: (f64, f64), heading_deg: f64, km: f64) -> (f64, f64) {
    let (la1, lo1, th, d) = (
        a.0.to_radians(),
        a.1.to_radians(),
        heading_deg.to_radians(),
        km / EARTH_KM,
    );
    let la2 = (la1.sin() * d.cos() + la1.cos() * d.sin() * th.cos()).asin();
    let lo2 = lo1 + (th.sin() * d.sin() * la1.cos()).atan2(d.cos() - la1.sin() * la2.sin());
    (la2.to_degrees(), (lo2.to_degrees() + 540.0) % 360.0 - 180.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geodesy_is_consistent() {
        let a = (48.7758, 9.1829);
        let b = destination(a, 90.0, 10.0);
        assert!((haversine_km(a, b) - 10.0).abs() < 0.01);
        assert!((bearing(a, b) - 90.0).abs() < 0.5);
    }
}
