# Reference values for tests/test_counts.py: R's MASS::glm.nb on the fixed cohort
# tests/data/nb_cohort.tsv (600 subjects, written once by
# t2lesion.stats.counts.simulate_counts(300, rate_ratio=0.5, theta=1.3, seed=2026)).
# Run from the repository root:  Rscript tests/data/nb_glmnb.R
# Writes tests/data/nb_glmnb_reference.tsv (15 significant digits). The *_tight rows are the
# same fits with glm.control(epsilon = 1e-14): R's default stops IRLS at a relative deviance
# change of 1e-8 and takes the SEs from the weights of the step before, which moves the
# Poisson SEs in the 5th digit; glm.nb's own result is already good to ~9 digits.
suppressPackageStartupMessages(library(MASS))
d <- read.delim("tests/data/nb_cohort.tsv", stringsAsFactors = FALSE)
d$arm <- factor(d$arm, levels = c("PLA", "OCR"))
d$log_tlc_bl1 <- log(d$tlc_bl + 1)
d$region_US <- as.numeric(d$region == "US")
d$age_gt45 <- as.numeric(d$age > 45)
f <- count ~ arm + log_tlc_bl1 + region_US + age_gt45 + offset(log(n_scans))
rows <- list()
add <- function(fit, model, theta = NA, theta_se = NA) {
  s <- coef(summary(fit))
  for (term in rownames(s)) {
    rows[[length(rows) + 1]] <<- data.frame(
      model = model, term = term, coef = s[term, 1], se = s[term, 2], z = s[term, 3], p = s[term, 4],
      theta = theta, theta_se = theta_se, two_log_likelihood = 2 * as.numeric(logLik(fit)),
      stringsAsFactors = FALSE)
  }
}
nb <- glm.nb(f, data = d)  # R's defaults (control = glm.control(epsilon = 1e-8, maxit = 25))
add(nb, "glm.nb", nb$theta, nb$SE.theta)
nb_tight <- glm.nb(f, data = d, control = glm.control(epsilon = 1e-14, maxit = 200))
add(nb_tight, "glm.nb_tight", nb_tight$theta, nb_tight$SE.theta)
po <- glm(f, family = poisson, data = d)
add(po, "poisson")
po_tight <- glm(f, family = poisson, data = d, control = glm.control(epsilon = 1e-14, maxit = 200))
add(po_tight, "poisson_tight")
rate <- d$count / d$n_scans
w <- wilcox.test(rate[d$arm == "OCR"], rate[d$arm == "PLA"])
rows[[length(rows) + 1]] <- data.frame(
  model = "wilcoxon", term = "armOCR", coef = NA, se = NA, z = NA, p = w$p.value, theta = NA, theta_se = NA,
  two_log_likelihood = NA, stringsAsFactors = FALSE)
out <- do.call(rbind, rows)
out$statistic <- ifelse(out$model == "wilcoxon", unname(w$statistic), NA)
num <- sapply(out, is.numeric)
out[num] <- lapply(out[num], function(x) ifelse(is.na(x), NA, sprintf("%.15g", x)))
write.table(out, "tests/data/nb_glmnb_reference.tsv", sep = "\t", quote = FALSE, row.names = FALSE, na = "n/a")
cat(sprintf("R %s, MASS %s\n", getRversion(), packageVersion("MASS")))
