# Reference values for the known-answer tests of t2lesion.stats (tests/test_stats_reference.py).
#
#   cd tests/data/stats_ref && Rscript make_reference.R
#
# Reads the fixed cohort (participants.tsv, long.tsv, outcomes.tsv, written once by
# make_cohort.py) and writes ref_*.tsv with 17 significant digits. Needs R with
# survival (>= 3), car and emmeans (Debian: r-base-core r-cran-survival r-cran-car
# r-cran-emmeans). The codings are those of t2lesion.stats (see its docstring):
# missing covariates (n/a) are left out of the models that use them (R's na.omit),
# arm reference PLA, region US vs rest of world, age group > 45 vs <= 45,
# EDSS < 4 vs >= 4, log TLV = log(TLV + 0.01), the multivariable model centres log
# TLV at the GT cohort mean.
suppressPackageStartupMessages({library(survival); library(car); library(emmeans)})
stopifnot(packageVersion("survival") >= "3.0")
options(warn = 1)
fmt <- function(df) { for (k in names(df)) if (is.double(df[[k]])) df[[k]] <- sprintf("%.17g", df[[k]]); df }
out <- function(df, name) write.table(fmt(df), name, sep = "\t", quote = FALSE, row.names = FALSE, na = "")

p <- read.delim("participants.tsv", na.strings = c("n/a", ""), stringsAsFactors = FALSE)
long <- read.delim("long.tsv", stringsAsFactors = FALSE)
o <- read.delim("outcomes.tsv", stringsAsFactors = FALSE)
p$sex <- ifelse(is.na(p$sex), NA, toupper(substr(p$sex, 1, 1)))
p$arm <- factor(p$arm, levels = c("PLA", "OCR"))
p$region_f <- factor(ifelse(p$region == "US", "US", "ROW"), levels = c("ROW", "US"))
p$agegrp <- factor(ifelse(p$age > 45, "gt45", "le45"), levels = c("le45", "gt45"))
p$sex_f <- factor(p$sex, levels = c("F", "M"))
p$edss_lt4 <- as.numeric(p$edss_bl < 4)
bl <- long[long$week == 0, c("participant_id", "source", "tlv_ml", "tlc")]
names(bl)[3:4] <- c("tlv_bl", "tlc_bl")
bl$log_tlv <- log(bl$tlv_bl + 0.01)
centre <- mean(bl$log_tlv[bl$source == "gt"])
bl$log_tlv_c <- bl$log_tlv - centre
sources <- c("gt", "classical")
levels_ <- c(0.95, 0.9)

# ---------------------------------------------------------------- ANCOVA
coef_rows <- list(); t2_rows <- list(); em_rows <- list()
anc_names <- c("(Intercept)" = "Intercept", "armOCR" = "arm_OCR", "tlv_bl" = "baseline_tlv_ml",
               "region_fUS" = "region_US", "agegrpgt45" = "age_gt45")
t2_names <- c(arm = "arm", tlv_bl = "baseline_tlv_ml", region_f = "region_US", agegrp = "age_gt45",
              Residuals = "Residual")
for (src in sources) for (w in c(48, 96)) {
  d <- merge(long[long$source == src & long$week == w, ], bl[bl$source == src, ], by = c("participant_id", "source"))
  d <- d[d$tlv_bl > 0, ]
  d$pct <- 100 * (d$tlv_ml - d$tlv_bl) / d$tlv_bl
  d <- merge(d, p, by = "participant_id")
  fit <- lm(pct ~ arm + tlv_bl + region_f + agegrp, data = d)
  s <- summary(fit)$coefficients
  for (lev in levels_) {
    ci <- confint(fit, level = lev)
    coef_rows[[length(coef_rows) + 1]] <- data.frame(
      source = src, week = w, level = lev, term = anc_names[rownames(s)], estimate = s[, 1], se = s[, 2],
      ci_low = ci[, 1], ci_high = ci[, 2], t = s[, 3], p = s[, 4], n = nobs(fit), df_resid = fit$df.residual)
    em <- summary(emmeans(fit, "arm", level = lev))
    em_rows[[length(em_rows) + 1]] <- data.frame(
      source = src, week = w, level = lev, arm = as.character(em$arm), lsmean = em$emmean, se = em$SE,
      df = em$df, ci_low = em$lower.CL, ci_high = em$upper.CL)
  }
  a <- Anova(fit, type = 2)
  t2_rows[[length(t2_rows) + 1]] <- data.frame(
    source = src, week = w, term = t2_names[rownames(a)], sum_sq = a[["Sum Sq"]], df = a[["Df"]],
    F = a[["F value"]], p = a[["Pr(>F)"]])
}
out(do.call(rbind, coef_rows), "ref_ancova_coef.tsv")
out(do.call(rbind, t2_rows), "ref_ancova_type2.tsv")
out(do.call(rbind, em_rows), "ref_ancova_lsmeans.tsv")

# ---------------------------------------------------------------- Cox
cox_names <- c(log_tlv = "log_tlv", tlc_bl = "tlc", armOCR = "arm_OCR", sex_fM = "sex_M",
               region_fUS = "region_US", edss_lt4 = "edss_lt4", age = "age", log_tlv_c = "log_tlv",
               "armOCR:log_tlv_c" = "arm_OCR_x_log_tlv")
models <- list(univariable_log_tlv = ~ log_tlv, univariable_tlc = ~ tlc_bl,
               multivariable = ~ arm + sex_f + region_f + edss_lt4 + age + log_tlv_c + arm:log_tlv_c)
ctl <- coxph.control(eps = 1e-14, iter.max = 200, toler.chol = 1e-15)
cox_rows <- list(); zph_rows <- list()
for (src in sources) for (ep in c("CDP24", "CCDP24")) {
  d <- merge(merge(o[o$endpoint == ep, ], p, by = "participant_id"), bl[bl$source == src, ], by = "participant_id")
  for (m in names(models)) {
    f <- update(Surv(time_weeks, event) ~ ., models[[m]])
    fit <- suppressWarnings(coxph(f, data = d, ties = "efron", control = ctl))
    b <- coef(fit); se <- sqrt(diag(vcov(fit))); z <- b / se
    for (lev in levels_) {
      q <- qnorm(0.5 + lev / 2)
      cox_rows[[length(cox_rows) + 1]] <- data.frame(
        source = src, endpoint = ep, model = m, level = lev, term = cox_names[names(b)], coef = b, se = se,
        hr = exp(b), hr_ci_low = exp(b - q * se), hr_ci_high = exp(b + q * se), z = z,
        p = 2 * pnorm(-abs(z)), n = fit$n, events = fit$nevent, loglik = fit$loglik[2],
        concordance = unname(fit$concordance["concordance"]), centre = centre)
    }
    zp <- cox.zph(fit, transform = "km", terms = FALSE)$table
    zph_rows[[length(zph_rows) + 1]] <- data.frame(
      source = src, endpoint = ep, model = m,
      term = ifelse(rownames(zp) == "GLOBAL", "GLOBAL", cox_names[rownames(zp)]),
      chisq = zp[, "chisq"], df = zp[, "df"], p = zp[, "p"])
  }
}
out(do.call(rbind, cox_rows), "ref_cox.tsv")
out(do.call(rbind, zph_rows), "ref_cox_zph.tsv")

# ---------------------------------------------------------------- Kaplan-Meier, log-rank
km_rows <- list(); lr_rows <- list()
for (src in sources) {
  b <- bl[bl$source == src, ]
  med <- median(b$tlv_bl)
  for (ep in c("CDP24", "CCDP24")) {
    d <- merge(merge(o[o$endpoint == ep, ], p, by = "participant_id"), b, by = "participant_id")
    d$group <- ifelse(d$tlv_bl > med, "high", "low")
    for (a in c("PLA", "OCR")) {
      da <- d[d$arm == a, ]
      lr <- survdiff(Surv(time_weeks, event) ~ group, data = da)
      lr_rows[[length(lr_rows) + 1]] <- data.frame(source = src, endpoint = ep, arm = a, median = med,
                                                   chisq = lr$chisq, p = pchisq(lr$chisq, 1, lower.tail = FALSE))
      for (g in c("low", "high")) for (ct in c("log-log", "log", "plain")) for (lev in levels_) {
        s <- survfit(Surv(time_weeks, event) ~ 1, data = da[da$group == g, ], conf.type = ct, conf.int = lev)
        km_rows[[length(km_rows) + 1]] <- data.frame(
          source = src, endpoint = ep, arm = a, group = g, conf_type = ct, level = lev, time = s$time,
          n_risk = s$n.risk, n_event = s$n.event, survival = s$surv, ci_low = s$lower, ci_high = s$upper)
      }
    }
  }
}
out(do.call(rbind, km_rows), "ref_km.tsv")
out(do.call(rbind, lr_rows), "ref_logrank.tsv")
writeLines(c(R.version.string, paste("survival", packageVersion("survival")), paste("car", packageVersion("car")),
             paste("emmeans", packageVersion("emmeans"))), "ref_versions.txt")
